"""Fixtures shared across test packages."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models gain nothing from a second thread, and the two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as (images in [0, 1] shaped (N, 1, 8, 8), labels); a test module
    that wants fedmia's ArrayDataset defines its own `digits`."""
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


@pytest.fixture
def flower_task_identity(monkeypatch):
    """Messages carry the run's identity, which Flower's runtime sets where a test runs none."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)

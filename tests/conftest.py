"""Fixtures shared across test packages."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models gain nothing from a second thread, and the two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

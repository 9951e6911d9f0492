"""The ClientApp as Flower's Ray backend uses it: sent along with every message (so it must
pickle small, by name), run in workers that imported torch before Ray assigned their CPUs."""

import pickle

import pytest
import ray.cloudpickle
import torch

from clients.app import RunClientApp, make_client_app, use_assigned_threads


def test_the_app_pickles_as_the_call_that_makes_it(tmp_path):
    app = make_client_app(str(tmp_path))
    restored = pickle.loads(pickle.dumps(app))
    assert isinstance(restored, RunClientApp) and restored is not app
    assert restored.run_dir == str(tmp_path)
    assert set(restored._registered_funcs) == set(app._registered_funcs) == {"train.default", "query.default"}
    assert len(ray.cloudpickle.dumps(lambda: app)) < 1000, "Flower's closure around it stays small"


def test_a_worker_uses_the_threads_ray_assigned(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        use_assigned_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("value", ["", "auto"])
def test_threads_stay_without_an_assignment(monkeypatch, value):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    use_assigned_threads()
    assert torch.get_num_threads() == threads

"""trainer.device on a machine with a GPU, with the CUDA calls faked where there is none."""
import pytest
import torch

from dynets.app import run as app


@pytest.fixture
def fake_gpu(monkeypatch):
    """Two fake GPUs; set_device behaves like torch's: it refuses a device without an index."""
    chosen = []

    def set_device(device):
        device = torch.device(device)
        if device.index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer")
        chosen.append(device.index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return chosen


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_auto_and_cuda_pick_the_current_gpu(fake_gpu, name):
    assert app.resolve_device(name) == torch.device("cuda", 1)
    assert fake_gpu == [1]


def test_torchrun_picks_the_local_rank(fake_gpu, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert app.resolve_device("auto") == torch.device("cuda", 0)
    assert fake_gpu == [0]


def test_an_explicit_index_is_kept(fake_gpu):
    assert app.resolve_device("cuda:0") == torch.device("cuda", 0)


def test_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert app.resolve_device("auto") == torch.device("cpu")

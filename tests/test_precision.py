"""settle.precision that a device cannot honour: tf32 off an NVIDIA GPU runs in fp32 and the log
says so once; bf16 on a CUDA device without bfloat16 is an error naming the option. The CUDA
support checks are faked: there may be no GPU."""
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dynets import Condition, SettleOptions
from dynets.app.options import ConfigError
from dynets.app.run import build
from dynets.app.builder import check_precisions
from dynets.models import LayeredHopfield
from dynets.precision import device_precision

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def fresh_checks():
    """device_precision caches its answer per device; each test sees its own (faked) devices."""
    device_precision.cache_clear()
    yield
    device_precision.cache_clear()


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


def fallbacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "precision='tf32' has no effect" in r.getMessage()]


def test_tf32_on_cpu_settles_in_fp32_and_says_so_once(caplog):
    """The same equilibrium as fp32 to the bit (torch's matmul precision changes CUDA matmuls
    only), and one warning for any number of settles."""
    torch.manual_seed(0)
    model, x = LayeredHopfield([20, 16, 4]), torch.rand(8, 20)
    settled = {}
    with caplog.at_level(logging.WARNING, logger="dynets"):
        for precision in ("fp32", "tf32", "tf32"):
            settled[precision] = SettleOptions(method="fast_euler", precision=precision)(model, Condition(x)).state
    for a, b in zip(settled["fp32"], settled["tf32"], strict=True):
        assert torch.equal(a, b)
    assert len(fallbacks(caplog)) == 1 and "settle.precision=fp32" in fallbacks(caplog)[0]


def test_tf32_on_a_gpu_before_ampere_falls_back_and_after_it_does_not(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_tf32_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="dynets"):
        assert device_precision("tf32", CUDA) == "fp32"
    assert len(fallbacks(caplog)) == 1
    device_precision.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_tf32_supported", lambda: True)
    assert device_precision("tf32", CUDA) == "tf32"


def test_bf16_on_a_gpu_without_bf16_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: False)
    with pytest.raises(ValueError, match=r"precision='bf16' needs bfloat16 .* use precision='fp32'"):
        device_precision("bf16", CUDA)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: True)
    assert device_precision("bf16", CUDA) == "bf16"
    assert device_precision("bf16", torch.device("cpu")) == "bf16"   # autocast emulates it on any CPU


def test_the_app_refuses_bf16_on_a_gpu_without_it_naming_the_option(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: False)
    with pytest.raises(ConfigError, match=r"^settle\.precision=bf16: .*use precision='fp32'"):
        check_precisions(composed("settle.precision=bf16"), CUDA)
    check_precisions(composed("settle.precision=tf32"), CUDA)   # not bf16: no error


def test_the_app_logs_tf32_on_cpu_once_when_it_builds_the_run(caplog):
    """Before any training (at build), once, though the rule's settle is a second copy of it."""
    config = composed("settle.precision=tf32", "trainer.device=cpu")
    assert config["rule"]["settle"]["precision"] == "tf32"
    with caplog.at_level(logging.WARNING, logger="dynets"):
        build(config)
    assert len(fallbacks(caplog)) == 1

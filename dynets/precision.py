"""Matmul precision inside a settle: the options of ``SettleOptions.precision`` and the context that applies one.

``fp32`` computes in float32; ``tf32`` lets CUDA matmuls round their inputs to TensorFloat-32 (10
mantissa bits; ``torch.set_float32_matmul_precision("high")``); ``bf16`` runs the settle under
``torch.autocast`` in bfloat16 (8 mantissa bits: matmuls and the ops autocast lists take bf16
inputs), while the state that the settle integrates stays float32.
:func:`device_precision` says which of them a device can honour.
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
log = logging.getLogger(__name__)


@functools.cache
def device_precision(precision: str, device: torch.device) -> str:
    """The precision that a settle asked for ``precision`` runs at on ``device``.

    ``tf32`` off a GPU that has TensorFloat-32 (CUDA from Ampere, compute capability 8.0, or AMD
    MI300) runs in ``fp32`` and says so once, as a warning in the run's log: the same config is
    meant to run on a laptop and on a GPU machine, and there the fallback changes no number, since
    ``torch.set_float32_matmul_precision`` changes CUDA matmuls only (on CPU a tf32 settle always
    computed in fp32). ``bf16`` on a CUDA device without bfloat16 is an error instead: running
    it in fp32 would change the numbers the user asked for, and autocast would refuse it anyway
    with a message that names no option. Cached: one check and one message per device.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: the device the settle runs on.

    Raises:
        ValueError: ``bf16`` on a CUDA device where ``torch.cuda.is_bf16_supported()`` is false.
    """
    cuda = device.type == "cuda"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' needs bfloat16 matmuls, which {device} does not have "
                         f"(torch.cuda.is_bf16_supported() is False); use precision='fp32' (settle.precision=fp32)")
    if precision == "tf32" and not (cuda and torch.cuda.is_tf32_supported()):
        log.warning("precision='tf32' has no effect on %s: TensorFloat-32 matmuls exist on NVIDIA GPUs from Ampere "
                    "on (and AMD MI300) only, so these settles run in fp32 (settle.precision=fp32 says so and "
                    "silences this)", device)
        return "fp32"
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """Apply ``precision`` for the duration of one settle; global settings are restored.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: the device the settle runs on (autocast is per device type).
    """
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)

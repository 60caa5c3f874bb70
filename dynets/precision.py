"""Matmul precision inside a settle: the options of ``SettleOptions.precision`` and the context that applies one.

``fp32`` computes in float32; ``tf32`` lets CUDA matmuls round their inputs to TensorFloat-32 (10
mantissa bits; ``torch.set_float32_matmul_precision("high")``); ``bf16`` runs the settle under
``torch.autocast`` in bfloat16 (8 mantissa bits: matmuls and the ops autocast lists take bf16
inputs), while the state that the settle integrates stays float32.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


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

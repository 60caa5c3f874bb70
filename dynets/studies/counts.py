"""What one training step does, counted rather than timed (``scripts/bench.py``'s load-independent
half): the multiply–adds of its matrix products and convolutions (by the formulas of
:mod:`torch.utils.flop_counter`), the tensor operations it dispatches, its host syncs, and the
settle sweeps its rule reports."""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

aten = torch.ops.aten
# Where the host reads a tensor's value, and so waits for the device (a sync on a GPU).
READS = {"item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"}


def _mv(a, b, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of A @ v (A ``(m, n)``): 2·m·n."""
    return 2 * a[0] * a[1]


def _addmv(c, a, b, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of c + A @ v: those of A @ v."""
    return _mv(a, b)


def _dot(a, b, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the dot product of two n-vectors: 2·n."""
    return 2 * a[0]


def _lstsq(a, b, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a least-squares solve of A ``(m, n)`` by Householder QR, its leading term 2·m·n²
    (Golub & Van Loan, Matrix Computations, §5.3)."""
    return 2 * a[-2] * a[-1] ** 2


# Products torch's counter leaves out, by their definitions (dynets' GMRES solves with mv and lstsq).
PRODUCTS = {aten.mv: _mv, aten.addmv: _addmv, aten.dot: _dot, aten.vdot: _dot, aten.linalg_lstsq: _lstsq}
FORMULAS = {**flop_registry, **{op: shape_wrapper(f) for op, f in PRODUCTS.items()}}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched under it, by name (views and in-place ones included:
    each is one call through the dispatcher, the per-operation overhead of an eager step), and the
    FLOPs of those with a formula (:data:`FORMULAS`). Not :class:`~torch.utils.flop_counter.FlopCounterMode`
    itself: its module tracker hooks every module's inputs, which ``torch.autograd.grad`` with
    respect to a leaf that went through a module refuses (the textbook EP of :mod:`dynets.testing`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls[str(func.overloadpacket)] += 1
        if func.overloadpacket in FORMULAS:
            self.flops += FORMULAS[func.overloadpacket](*args, **(kwargs or {}), out_val=out)
        return out


class HostReads(TorchFunctionMode):
    """Counts the host's reads of tensor values under it (:data:`READS`: ``.item()``, ``.tolist()``,
    ``.numpy()``, ``float(t)``, ``bool(t)``, ...): each is a sync on a GPU. Seen at the Python level,
    as ``.tolist()`` and ``.numpy()`` dispatch no ATen operation on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.reads += getattr(func, "__name__", None) in READS
        return func(*args, **(kwargs or {}))


def sweeps(metrics) -> dict[str, float]:
    """The settle sweeps (or steps) per phase among a rule's metrics: its ``steps_<phase>`` and
    ``<phase>_steps`` entries (none for a step that returns no metrics dict).

    Args:
        metrics: an update's metrics, or anything else a step returned.
    """
    if not isinstance(metrics, dict):
        return {}
    return {k: v for k, v in metrics.items() if k.startswith("steps_") or k.endswith("_steps")}


def step_counts(step: Callable[[], object]) -> dict:
    """Runs ``step`` once under the counters: ``macs`` (multiply–adds: FLOPs of products and
    convolutions over 2), ``ops`` (ATen operations dispatched), ``syncs`` (the host's reads of tensor
    values, :class:`HostReads`) and ``sweeps`` (:func:`sweeps` of what the step returned first, as the steps of
    :func:`~dynets.studies.timing.with_adam` return the rule's metrics).

    Args:
        step: a step callable of the bench; it runs once, with its side effects (an optimizer step).
    """
    with OpCounter() as ops, HostReads() as host:
        out = step()
    first = out[0] if isinstance(out, tuple) and out else out
    return {"macs": ops.flops // 2, "ops": ops.calls.total(), "syncs": host.reads, "sweeps": sweeps(first)}


def counts(steps: dict[str, Callable[[], object]], base: str) -> dict:
    """The bench line's counts of each of ``steps``, one pass each (run it outside the timed
    loop): ``macs_<name>``, ``ops_<name>``, ``syncs_<name>``, ``sweeps_<name>`` (where the rule
    reports them) and ``macs_ratio_vs_backprop``, ``ops_ratio_vs_backprop`` of ``base``.

    Args:
        steps: name: a step callable; one must be ``backprop``.
        base: the method the ratios are of.
    """
    got = {name: step_counts(step) for name, step in steps.items()}
    line = {f"{key}_{name}": c[key] for name, c in got.items() for key in ("macs", "ops", "syncs")}
    line.update({f"sweeps_{name}": c["sweeps"] for name, c in got.items() if c["sweeps"]})
    return {**line, "macs_ratio_vs_backprop": got[base]["macs"] / got["backprop"]["macs"],
            "ops_ratio_vs_backprop": got[base]["ops"] / got["backprop"]["ops"]}

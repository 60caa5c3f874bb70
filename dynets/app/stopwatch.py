"""Where a training epoch's time goes: the seconds spent in the rule's update (its settles) and in
the optimizer step, summed per epoch by :func:`dynets.app.fit.fit`."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

# The per-epoch metrics a stopwatch adds: the rule's update (settles and the update it computes),
# and writing the gradients and the optimizer step.
SECTIONS = ("settle_time_s", "optimizer_time_s")


class Stopwatch:
    """Seconds spent in named sections of code, summed until :meth:`read`.

    CUDA kernels run asynchronously, so without a synchronisation a section's time is that of
    launching its work, not of running it; ``sync`` (e.g. ``torch.cuda.synchronize``) is then
    called before each reading of the clock. It costs a host–device round trip per section, which
    is why it is only on request (:func:`for_model`); on a CPU the work is done when the call returns.

    Args:
        sync: called before each reading of the clock, or ``None``.
        clock: seconds as a float (``time.perf_counter``).
    """

    def __init__(self, sync: Callable[[], object] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.sync, self.clock, self.totals = sync, clock, {}

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return self.clock()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to ``name``'s total.

        Args:
            name: the section's name (a metric's, e.g. ``settle_time_s``).
        """
        start = self._now()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + self._now() - start

    def read(self) -> dict[str, float]:
        """The totals since the last reading (every name of :data:`SECTIONS` present), and reset."""
        totals, self.totals = {name: 0.0 for name in SECTIONS} | self.totals, {}
        return totals


def for_model(model: torch.nn.Module, sync: bool) -> Stopwatch:
    """A stopwatch for training ``model``: synchronising its CUDA device when ``sync`` (else, and
    on a CPU where there is nothing to wait for, none).

    Args:
        model: the model trained (its parameters' device is the one waited for).
        sync: whether to synchronise CUDA around each section (exact, but one sync each).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if sync and device.type == "cuda":
        return Stopwatch(lambda: torch.cuda.synchronize(device))
    return Stopwatch()

"""Hebbian storage and sleep unlearning for :class:`~dynets.models.memory.AssociativeMemory`
(Hopfield 1982; Hopfield, Feinstein & Palmer 1983), with the recall monitor and the stop
rule that keep unlearning from destroying the memory."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..capabilities import PatternStore
from ..models.memory import AssociativeMemory, Memory, check_patterns, noisy_cues, overlaps
from ..settle import SettleOptions
from ..phases import Condition
from .base import Rule, Update

log = logging.getLogger("dynets")

DREAM_SETTLE = SettleOptions(method="fast_euler", step_size=0.5, atol=1e-3, max_time=100.0)


def hebbian(patterns: torch.Tensor) -> torch.Tensor:
    """W = (1/N) Σ_μ ξ_μ ξ_μᵀ with zero diagonal, for ``(P, N)`` ±1 patterns (Hopfield 1982)."""
    check_patterns(patterns, patterns.shape[-1])
    return (patterns.T @ patterns).div_(patterns.shape[1]).fill_diagonal_(0.0)


def dream_outer(states: torch.Tensor) -> torch.Tensor:
    """Σ_d s_d s_dᵀ over ``(D, N)`` states, zero diagonal."""
    return (states.T @ states).fill_diagonal_(0.0)


class HebbianStorage(Rule):
    r"""Hebbian storage: ``p.grad`` of W is −(1/N) Σ_μ ξ_μξ_μᵀ (zero diagonal) for the batch
    of patterns x, so SGD with lr = 1 from W = 0 stores the batch as W = (1/N) Σ ξξᵀ, and
    later batches add to it. Equivalently p.grad = (2/N) Σ_μ ∂E/∂W(ξ_μ): the stored
    patterns' energy is lowered. The labels y are ignored (may be None).
    """

    needs = (PatternStore,)
    needs_target = False

    def update(self, model: AssociativeMemory, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        self.check_model(model)
        check_patterns(x, model.n)
        return Update({"weight": -hebbian(x.to(model.weight.dtype))}, {"patterns": float(len(x))})


@dataclass(frozen=True)
class RecallMonitor:
    """How well a memory holds its patterns.

    ``stable``: the fraction of stored patterns ξ from which a settle ends with overlap
    ξ·sign(s*)/N ≥ ``threshold`` (fixed points of the flow, within its tolerance).
    ``recall``: the same from cues with round(``flip``·N) units flipped; the cues are drawn
    from ``torch.Generator().manual_seed(seed)`` anew at each measurement, so successive
    measurements of one pattern set use the same cues and are comparable.
    ``overlap``: the mean overlap reached from those cues, which moves before the success
    fractions do (at high load both fractions start at 0 and stay there for a while).
    """

    flip: float = 0.1
    threshold: float = 0.99
    seed: int = 0
    settle: SettleOptions = DREAM_SETTLE

    def __call__(self, model: Memory, patterns: torch.Tensor) -> dict[str, float]:
        check_patterns(patterns, model.n)
        g = torch.Generator(patterns.device).manual_seed(self.seed)
        cues = torch.cat([patterns, noisy_cues(patterns, self.flip, g)])
        end = self.settle(model, Condition(batch_size=len(cues)), init=model.split(cues))
        m = overlaps(model.output(end.state), torch.cat([patterns, patterns])).view(2, -1)
        stable, recall = (m >= self.threshold).float().mean(1).tolist()
        return {"stable": stable, "recall": recall, "overlap": m[1].mean().item()}


class HebbianSleep(Rule):
    r"""Unlearning in sleep (Hopfield, Feinstein & Palmer 1983): D dreams start from random
    ±1 states drawn from ``generator``, settle with nothing clamped to attractors s*_d
    (mostly spurious mixtures at high load), and their Hebbian term is removed:

        ΔW = −ε Σ_d s*_d s*_dᵀ  (zero diagonal),

    written as ``p.grad`` = Σ_d s*_d s*_dᵀ = −2 Σ_d ∂E/∂W(s*_d) (the attractors' energy is
    raised), so SGD with lr = ε applies it with ε per dream. The literature's regime is a
    small ε (≈ 0.01/N) and many dreams.

    Every ``monitor_every`` calls, before the update, the :class:`RecallMonitor` measures
    the stored patterns x (the batch passed to :meth:`update`) and the stop rule is applied:

    - ``destroying``: the stable or the recall fraction or the mean overlap fell more than
      ``drop`` below its best so far: a warning is logged;
    - ``complete``: every stored pattern is stable and recalled: there is nothing left to
      improve, and unlearning further erodes the memories (at low load the dreams fall into
      them: at N = 200, α = 0.05, the recall of storage alone, 1.00, fell to 0.80–0.90
      before a drop stopped it, in ``scripts/recall.py`` without this rule);
    - ``plateau``: none of them rose above its best for ``patience`` measurements.

    Once stopped, ``stopped`` holds the reason, :meth:`update` holds no gradient (written,
    every ``p.grad`` is None: an optimizer leaves W alone) and its metrics carry ``stopped = 1``.
    Damage between two measurements is not undone: a small ``monitor_every`` bounds it. The
    stop rule's state is in :meth:`state_dict`, so a checkpointed run resumes exactly.

    Args:
        dreams: D, dreams per call.
        settle: how dreams settle (default: Euler Δt = 0.5 to ‖ds/dt‖ ≤ 1e-3).
        monitor: the recall monitor (its own settle options).
        monitor_every: calls between measurements.
        drop: allowed fall below the best stable / recall fraction.
        patience: measurements without improvement before stopping; None: only the drop
            rule stops (neither ``complete`` nor ``plateau``).
        seed: seed of ``generator``, the dreams' only source of randomness.

    A dream that does not reach an attractor within the settle's budget is left out of the
    unlearning term and counted (``unconverged_dreams``), as perturbation rules treat a
    probe that did not settle: it is one of many random draws, not a phase of the batch.
    """

    needs = (PatternStore,)
    needs_target = False

    def __init__(self, dreams: int = 100, settle: SettleOptions | None = None, monitor: RecallMonitor | None = None,
                 monitor_every: int = 1, drop: float = 0.05, patience: int | None = 10, seed: int = 0) -> None:
        super().__init__(settle if settle is not None else DREAM_SETTLE)
        if dreams < 1 or monitor_every < 1 or (patience is not None and patience < 1):
            raise ValueError(f"dreams, monitor_every and patience must be >= 1; got {dreams}, {monitor_every}, {patience}")
        if not 0 <= drop < 1:
            raise ValueError(f"drop must be a fraction in [0, 1), got {drop}")
        self.dreams, self.monitor_every, self.drop, self.patience = int(dreams), int(monitor_every), drop, patience
        self.monitor = monitor if monitor is not None else RecallMonitor()
        self.generator = torch.Generator().manual_seed(seed)
        self.calls, self.stale, self.stopped = 0, 0, None
        self.best = {"stable": -1.0, "recall": -1.0, "overlap": -1.0}
        self.last: dict[str, float] = {}

    def dream(self, model: AssociativeMemory) -> tuple[torch.Tensor, dict[str, float]]:
        """``(D', N)`` attractors reached from D random ±1 states (those that settled), and the
        settle's metrics."""
        start = torch.randint(0, 2, (self.dreams, model.n), generator=self.generator).to(model.weight) * 2 - 1
        end = self.settle(model, Condition(batch_size=self.dreams), init=model.split(start))
        settled = end.residual <= end.tolerance
        metrics = {"steps_dream": float(end.steps), "converged": end.converged_fraction,
                   "unconverged_dreams": int((~settled).sum())}
        return model.output(end.state)[settled], metrics

    def update(self, model: AssociativeMemory, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        """Dream and return the unlearning term, unless the monitor (measured on the stored
        patterns ``x`` every ``monitor_every`` calls) says stop; y is ignored."""
        self.check_model(model)
        if self.stopped is None and self.calls % self.monitor_every == 0:
            self.last = self.monitor(model, x)
            self._apply_stop_rule()
        self.calls += 1
        if self.stopped is not None:
            return Update({}, {**self.last, "stopped": 1.0})
        states, metrics = self.dream(model)
        return Update({"weight": dream_outer(states)}, {**self.last, **metrics, "stopped": 0.0})

    def state_dict(self) -> dict:
        """The stop rule's state: calls so far, measurements without improvement, the reason it
        stopped (or None), the best and the last measurement. The dreams' generator is
        checkpointed as an attribute (:func:`~dynets.rules.base.generators`)."""
        return {"calls": self.calls, "stale": self.stale, "stopped": self.stopped,
                "best": dict(self.best), "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s stop rule (a checkpoint's: the run continues exactly)."""
        self.calls, self.stale, self.stopped = int(state["calls"]), int(state["stale"]), state["stopped"]
        self.best, self.last = dict(state["best"]), dict(state["last"])

    def _apply_stop_rule(self) -> None:
        now, best = self.last, self.best
        fallen = [k for k in best if now[k] < best[k] - self.drop]
        if fallen:
            self.stopped = "destroying"
            log.warning("HebbianSleep stopped unlearning after %d calls: %s fell from %s to %s (more than drop=%g)",
                        self.calls, " and ".join(fallen), [round(best[k], 3) for k in fallen],
                        [round(now[k], 3) for k in fallen], self.drop)
            return
        if self.patience is not None and now["stable"] == now["recall"] == 1.0:
            self.stopped = "complete"
            log.info("HebbianSleep stopped unlearning after %d calls: every stored pattern is stable and recalled",
                     self.calls)
            return
        improved = any(now[k] > best[k] for k in best)
        self.best = {k: max(now[k], best[k]) for k in best}
        self.stale = 0 if improved else self.stale + 1
        if self.patience is not None and self.stale >= self.patience:
            self.stopped = "plateau"
            log.info("HebbianSleep stopped unlearning after %d calls: stable %.3f, recall %.3f and overlap %.3f have "
                     "not improved in %d measurements", self.calls, now["stable"], now["recall"], now["overlap"], self.stale)

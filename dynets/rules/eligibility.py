"""Reward-modulated Hebbian learning with eligibility traces in a free-running network: perturbations
during a trial, a trace per synapse, one reward at its end (Miconi 2017; Fiete & Seung 2006)."""
from __future__ import annotations

from typing import Any

import torch

from ..capabilities import FreeRunning
from ..phases import Condition
from ..trajectory import METHODS, run
from .base import Rule, Update

MODES = ("miconi", "fiete_seung")
# Both are multiplicative, S(ab) = S(a)·S(b): the trace Σ_t S(r_j·Δx_i) is then one matrix product.
SUPRALINEAR = {"cube": lambda u: u * u * u, "signed_square": lambda u: u * u.abs()}
LEARNING_RATES = {"miconi": 0.1, "fiete_seung": 1e-3}   # the published code's (net.cpp, DELTAX / NODEPERT)


class EligibilityTrace(Rule):
    r"""Node perturbation with eligibility traces on a trial of a free-running network.

    During the trial each free unit is perturbed at random times (probability ``rate``·Δt per step)
    by ξ uniform in ±``amplitude``, added to its drive for one step. Each synapse keeps a trace:

    - ``miconi`` (Miconi 2017): e_ij = Σ_t S(r_j(t−1)·(x_i(t) − x̄_i(t−1))), x̄ a fast running mean
      (x̄(t) = d·x̄(t−1) + (1−d)·x(t), d = ``trace_decay``, x̄(0) = x(0)), S supralinear and sign
      preserving: it keeps the large, perturbation-driven fluctuations and drops the small ones
      the recurrent input causes, which carry no information about the reward;
    - ``fiete_seung`` (Fiete & Seung 2006): e_ij = Σ_t ξ_i(t)·r_j(t), the perturbation itself.

    With E − Ē the error's change a perturbation caused, E[(E − Ē)·e] ∝ ∂E/∂W to first order in ξ
    for ``fiete_seung`` (measured: cosine 0.995–0.998 with autograd through the trial over 4000
    trials, ``tests/test_eligibility.py``); ``miconi`` approximates it only where the kicks dominate
    the recurrent fluctuations (0.76–0.80 with kicks of 0.6, negative with kicks of 0.06).

    At the end of the trial the error E = mean |output − target| over the scored steps (the reward
    is R = −E) against a running mean Ē per trial type (Ē ← b·Ē + (1−b)·E after each trial,
    b = ``baseline_decay``) gives ΔW_ij = −η·s·e_ij·(E − Ē) = η·s·e_ij·(R − R̄), clipped to
    ±``max_change``; s = Ē with ``scale_by_baseline`` (the published code's extra factor, which
    shrinks the steps as the error falls), else 1. No update until a trial type has been seen
    ``warmup`` times (Ē starts at 0). The update is returned as grads = −ΔW (descent sign: SGD
    with lr = 1 applies W ← W + ΔW).

    The defaults are the published code's (ThomasMiconi/BiologicallyPlausibleLearningRNN,
    dnms/net.cpp): rate 0.003 per ms (3 per second), amplitude 16 (a kick of 16·Δt/τ ≈ 0.53 at
    Δt = 1, τ = 30), d = 0.05, b = 0.75, clip 3e-4, S(u) = u³, η = 0.1 (``miconi``) or 1e-3
    (``fiete_seung``), updates from the 101st trial (25 of each of the four types).

    A row of the batch is one learner's trial: with a population (``networks`` > 1) each network's
    own, with one network several trials summed into one change before the clip. Ē is kept per
    row and trial type.

    Args:
        mode: ``miconi`` or ``fiete_seung``.
        lr: η (default: the mode's published value).
        rate: perturbations per unit and per unit of time.
        amplitude: the perturbations' half-range A (ξ uniform in [−A, A]).
        trace_decay: d, the weight of the old value in the running mean x̄ (``miconi``).
        baseline_decay: b, the weight of the old value in the error baseline Ē.
        max_change: the clip of |ΔW_ij| per trial; ``None``: no clip.
        supralinear: S, ``cube`` (u³) or ``signed_square`` (u·|u|) (``miconi``).
        scale_by_baseline: multiply the change by Ē.
        warmup: trials of a type (per row) before its changes start.
        method: the trajectory's integrator (:data:`dynets.trajectory.METHODS`).
        seed: seed of the rule's ``generator`` (perturbations and trial starts).
    """

    needs = (FreeRunning,)

    def __init__(self, mode: str = "miconi", lr: float | None = None, rate: float = 0.003, amplitude: float = 16.0,
                 trace_decay: float = 0.05, baseline_decay: float = 0.75, max_change: float | None = 3e-4,
                 supralinear: str = "cube", scale_by_baseline: bool = True, warmup: int = 25,
                 method: str = "fast_euler", seed: int = 0) -> None:
        super().__init__()
        for name, value, valid in (("mode", mode, MODES), ("supralinear", supralinear, SUPRALINEAR),
                                   ("method", method, METHODS)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not (0 <= trace_decay < 1 and 0 <= baseline_decay < 1 and amplitude >= 0 and rate >= 0
                and (max_change is None or max_change > 0) and warmup >= 0):
            raise ValueError(f"need 0 <= trace_decay, baseline_decay < 1, amplitude, rate, warmup >= 0 and "
                             f"max_change > 0 or null; got {trace_decay}, {baseline_decay}, {amplitude}, {rate}, "
                             f"{warmup}, {max_change}")
        self.mode, self.lr = mode, float(LEARNING_RATES[mode] if lr is None else lr)
        self.rate, self.amplitude, self.trace_decay = float(rate), float(amplitude), float(trace_decay)
        self.baseline_decay, self.max_change, self.supralinear = float(baseline_decay), max_change, supralinear
        self.scale_by_baseline, self.warmup, self.method = bool(scale_by_baseline), int(warmup), method
        self.generator = torch.Generator().manual_seed(int(seed))
        self.baseline, self.seen = torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
        self.last_error = torch.zeros(0)   # (batch,) the last trial's error per row, for learning curves

    def update(self, model, x: torch.Tensor, y: torch.Tensor | None = None,
               kind: torch.Tensor | None = None) -> Update:
        """One trial per row: run it with perturbations, score it, and change W by the traces.

        Args:
            model: a free-running network (capability :class:`~dynets.capabilities.FreeRunning`).
            x: ``(batch, steps, in_features)`` the input series.
            y: ``(batch, steps, out_features)`` the target series, NaN where not scored.
            kind: ``(batch,)`` the trial types (integers; default all 0), each with its own baseline.
        """
        self.check_model(model)
        if y is None or y.shape[:2] != x.shape[:2] or torch.isnan(y).all():
            got = "None" if y is None else f"of shape {tuple(y.shape)}"
            raise ValueError(f"{type(self).__name__} needs labels y (the target series (batch, steps, out_features) "
                             f"on the input's grid, NaN where not scored, with some scored steps); got y={got} for x "
                             f"of shape {tuple(x.shape)}")
        kind = torch.zeros(len(x), dtype=torch.long) if kind is None else kind.long().cpu()
        xi = self.perturbations(model, *x.shape[:2])
        path = run(model, Condition(x, noise={0: xi}), model.trial_start(len(x), self.generator),
                   steps=x.shape[1], dt=model.trial_step(), method=self.method).states[0]
        error = trial_error(model.output((path[1:],)).transpose(0, 1), y)
        trace = self.trace(model, path, xi)
        change = self.change(model, trace, error, kind)
        self._observe(error, kind)
        self.last_error = error
        metrics = {"error": error.mean().item(), "perturbations": float((xi != 0).sum()) / len(x),
                   "change": change.abs().mean().item()}
        return Update({"weight": -change}, metrics)

    def perturbations(self, model, batch: int, steps: int) -> torch.Tensor:
        """ξ ``(batch, steps, units)``: each free unit kicked with probability rate·Δt per step."""
        reach = model.perturbable()
        shape = (batch, steps, len(reach))
        kicked = torch.rand(shape, generator=self.generator) < self.rate * model.trial_step()
        size = (torch.rand(shape, generator=self.generator) * 2 - 1) * self.amplitude
        return (kicked * size).to(reach) * reach

    def trace(self, model, path: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The eligibility e ``(batch, units, units)`` (post i, pre j) of a trial's path ``(steps+1, batch, units)``."""
        r = model.rates((path,))
        if self.mode == "fiete_seung":
            return fiete_seung_trace(r, xi)
        return miconi_trace(path, r, self.trace_decay, SUPRALINEAR[self.supralinear])

    def change(self, model, trace: torch.Tensor, error: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """ΔW ``weight``'s shape from the traces, the errors ``(batch,)`` and the baselines."""
        self._grow(len(error), int(kind.max()) + 1)
        rows = torch.arange(len(error))
        baseline, ready = self.baseline[rows, kind], self.seen[rows, kind] >= self.warmup
        scale = self.lr * (error - baseline) * (baseline if self.scale_by_baseline else 1.0) * ready
        change = -scale.to(trace)[:, None, None] * trace
        change = change.sum(0, keepdim=True) if model.get_parameter("weight").shape[0] == 1 else change
        return change if self.max_change is None else change.clamp(-self.max_change, self.max_change)

    def _grow(self, rows: int, kinds: int) -> None:
        """Baselines for ``rows`` rows and ``kinds`` trial types, keeping those already kept."""
        if self.baseline.shape[0] and self.baseline.shape[0] != rows:
            raise ValueError(f"{type(self).__name__} keeps a baseline per row: it was called with "
                             f"{self.baseline.shape[0]} rows and now {rows}")
        old, seen = self.baseline, self.seen
        if old.shape != (rows, max(kinds, old.shape[1])):
            self.baseline = torch.zeros(rows, max(kinds, old.shape[1]))
            self.seen = torch.zeros(rows, max(kinds, old.shape[1]), dtype=torch.long)
            self.baseline[:old.shape[0], :old.shape[1]], self.seen[:old.shape[0], :old.shape[1]] = old, seen

    def _observe(self, error: torch.Tensor, kind: torch.Tensor) -> None:
        rows, b = torch.arange(len(error)), self.baseline_decay
        self.baseline[rows, kind] = b * self.baseline[rows, kind] + (1 - b) * error.cpu().float()
        self.seen[rows, kind] += 1

    def state_dict(self) -> dict[str, Any]:
        """The baselines and the trials seen per row and type."""
        return {"baseline": self.baseline.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.baseline, self.seen = state["baseline"].clone(), state["seen"].clone()


def trial_error(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` mean |output − y| over the scored (non-NaN) entries of each row.

    Args:
        output: ``(batch, steps, out_features)`` the read-out after each step.
        y: ``(batch, steps, out_features)`` the targets, NaN where not scored.
    """
    scored = ~torch.isnan(y)
    gap = torch.where(scored, (output - torch.nan_to_num(y)).abs(), torch.zeros_like(output))
    return gap.flatten(1).sum(1) / scored.flatten(1).sum(1)


def miconi_trace(x: torch.Tensor, r: torch.Tensor, decay: float, supralinear) -> torch.Tensor:
    """e_ij = Σ_{t=1}^{T} S(r_j(t−1)·(x_i(t) − x̄_i(t−1))), x̄(0) = x(0), x̄(t) = d·x̄(t−1) + (1−d)·x(t).

    Args:
        x: ``(T+1, batch, units)`` the potentials along the trial.
        r: ``(T+1, batch, units)`` the rates along the trial.
        decay: d.
        supralinear: S, multiplicative (S(ab) = S(a)·S(b)).

    Returns:
        ``(batch, units, units)`` e, post i by pre j.
    """
    mean, fluctuation = x[0], torch.empty_like(x[1:])
    for t in range(1, len(x)):
        fluctuation[t - 1] = x[t] - mean
        mean = decay * mean + (1 - decay) * x[t]
    return torch.einsum("tbi,tbj->bij", supralinear(fluctuation), supralinear(r[:-1]))


def fiete_seung_trace(r: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """e_ij = Σ_{t=0}^{T−1} ξ_i(t)·r_j(t): the perturbation of step t times the rate it acted with.

    Args:
        r: ``(T+1, batch, units)`` the rates along the trial.
        xi: ``(batch, T, units)`` the perturbations.
    """
    return torch.einsum("bti,tbj->bij", xi, r[:-1])

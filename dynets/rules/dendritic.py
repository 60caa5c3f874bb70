"""Urbanczik–Senn plasticity of the dendritic microcircuit (Urbanczik & Senn 2014; Sacramento,
Costa, Bengio & Senn 2018): a taught phase, in which the forward weights learn from the somas'
deviation from their basal prediction, and a sleep phase, in which only the interneurons' weights
learn, until the apical potentials vanish (the self-predicting state)."""
from __future__ import annotations

import logging
from typing import Mapping

import torch

from ..capabilities import Lateral, Plastic
from ..costs import Cost
from ..phases import Condition
from ..plasticity import settle_plastic
from ..settle import SettleOptions
from .base import Rule, Update

log = logging.getLogger("dynets")

KINDS = ("up", "ip", "pi", "down")
MODES = ("steady", "online")
SLEEP_INPUTS = ("data", "noise")
DEFAULT_RATES = {"up": 1.0, "ip": 1.0, "pi": 0.0, "down": 1.0}
"""As the published bars experiments: W_PI stays where the self-predicting state put it
(−W_down, fixed), W_IP follows the changes of the next layer's W_up."""


def _rates(rates: Mapping[str, float] | None, default: Mapping[str, float]) -> dict[str, float]:
    """``rates`` (per kind of weight: ``up``, ``ip``, ``pi``, ``down``) over ``default``; an unknown kind is an error."""
    unknown = set(rates or {}) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds of weight {sorted(unknown)} in rates; valid: {', '.join(KINDS)}")
    return {**default, **(rates or {})}


def _descent(dw: Mapping[str, torch.Tensor], rates: Mapping[str, float], names) -> dict[str, torch.Tensor]:
    """Torch's descent sign of the rule's ΔW: grad = −rate·dW, for the named weights with a rate."""
    return {n: -rates[n.split(".")[0]] * dw[n] for n in names if n in dw and rates[n.split(".")[0]]}


class UrbanczikSenn(Rule):
    r"""The microcircuit's rule in a taught phase (output nudged by the teacher, β·g_som):

        dW_up,k ∝ (φ(u_k) − φ(ĝ_k v_B,k)) r_{k−1}ᵀ,   dW_IP,k ∝ (φ(u_I,k) − φ(g_D/(g_l + g_D) v_I,k)) r_kᵀ,
        dW_PI,k ∝ −v_A,k φ(u_I,k)ᵀ,                   (dW_down,k ∝ (φ(u_k) − φ(W_down,k r_{k+1})) r_{k+1}ᵀ when learned),

    (``model.plasticity``), written as grads = −rate·dW (the optimizer's lr is the learning rate).
    Near the self-predicting state the forward weights' update is backprop's for the output error
    φ'(u_N)⊙∂C/∂u_N, to first order in β (:class:`~dynets.models.DendriticMicrocircuit`).

    ``mode="steady"`` (the fast path): dW at the taught steady state, reached from the free one.
    ``mode="online"``: the weights change during the taught settle, dW/dt = η·rate·dW(s(t), W(t)),
    integrated with the state (:func:`dynets.plasticity.settle_plastic`) until the state's stop
    test; the update is the net change over η times the time T it took, −ΔW/(ηT), the average of
    −rate·dW along the path. The module's parameters are not edited during the settle: they stay
    what the optimizer and the checkpoints know, and SGD with lr = ηT writes exactly the change the
    weights made. From a steady state, online equals steady up to O(η); from the free state it
    also integrates the transient, as the paper's always-on plasticity does.

    Args:
        beta: the teacher's strength, a somatic conductance β·g_som on the output (1: the paper's).
        rates: per kind (``up``, ``ip``, ``pi``, ``down``), a factor on the learning rate (0: not
            trained); default ``up`` 1, ``ip`` 1, ``pi`` 0, ``down`` 1 (``down`` only when the model
            learns it).
        mode: ``steady`` or ``online``.
        eta: online only, the learning rate η of the weights during the settle.
        min_time: online only, the least time the taught phase lasts (a pattern's presentation).
        settle: how the phases settle (the online phase: its step, tolerances and max_time, by Euler).
        cost: the cost whose gradient the teacher injects (default squared error).
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs = (Plastic,)

    def __init__(self, beta: float = 1.0, rates: Mapping[str, float] | None = None, mode: str = "steady",
                 eta: float = 1e-3, min_time: float = 0.0, settle: SettleOptions | None = None,
                 cost: Cost | None = None, allow_unconverged: bool = False) -> None:
        super().__init__(settle, cost, allow_unconverged)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if not beta > 0 or not eta > 0:
            raise ValueError(f"beta and eta must be > 0, got beta={beta}, eta={eta}")
        self.beta, self.mode, self.eta, self.min_time = float(beta), mode, float(eta), float(min_time)
        self.rates = _rates(rates, DEFAULT_RATES)

    def update(self, model, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        condition, free, metrics = self.free_phase(model, x, y)
        taught = condition.nudged(self.beta)
        trained = [n for n, _ in model.trained_parameters()]
        if self.mode == "steady":
            eq = self.settle(model, taught, init=free.state)
            grads = _descent(model.plasticity(eq.state, taught, model.weights()), self.rates, trained)
        else:
            eta = {n: self.eta * self.rates[n.split(".")[0]] for n in trained}
            eq, weights = settle_plastic(model, taught, eta, free.state, self.settle, self.min_time)
            start, scale = dict(model.named_parameters()), -1.0 / (self.eta * max(eq.t, self.settle.step_size))
            grads = {n: (weights[n] - start[n]) * scale for n in trained if eta[n]}
        metrics.update(steps_taught=eq.steps, converged=min(metrics["converged"], eq.converged_fraction))
        self.check_converged(metrics, {"free": free, "taught": eq})
        return Update(grads, metrics)


class DendriticSleep(Rule):
    r"""Sleep: no teacher, the inputs (labels ignored) plus Gaussian noise of std ``noise`` drawn
    from the rule's generator (``inputs="data"``), or pure noise, the batch's mean value plus that
    noise (``inputs="noise"``: inputs that span the input space, as the published code's random
    inputs do); only the lateral weights learn, at the free steady state,

        dW_IP,k ∝ (φ(u_I,k) − φ(g_D/(g_l + g_D) v_I,k)) r_kᵀ,   dW_PI,k ∝ −v_A,k φ(u_I,k)ᵀ,

    which drives the network to its self-predicting state, v_A = 0 (Sacramento et al. 2018, Fig. 2).
    Sleep cancels v_A only on the rates its inputs reach: on data, whose rates span few directions,
    W_PI and W_IP stay away from −W_down and the analytic W_IP, and a teacher's nudge, which moves
    the rates in other directions, is then not carried as the error. Noise inputs reach more of
    them; with relu rates, interneurons silent on every input learn only with the model's
    ``interneuron_error="potential"`` (measured in ``docs/results/dendritic.md``).

    The stop rule watches a = mean over the batch of ‖v_A‖ (all hidden layers together), measured
    before each update; its first value is a_0. It stops, and the updates are empty from then on
    (every ``p.grad`` None), when a ≤ ``stop``·a_0 (``complete``), or when a has not fallen below
    its best for ``patience`` calls (``plateau``; ``None``: never). Its state is in
    :meth:`state_dict`, so a resumed run continues exactly. Metrics: ``apical`` (a),
    ``apical_ratio`` (a/a_0), ``stopped``.

    Args:
        noise: std of the noise added to the inputs (of the inputs themselves with ``inputs="noise"``).
        inputs: ``data`` (the batch plus noise) or ``noise`` (the batch's mean plus noise).
        rates: per kind (``ip``, ``pi``), a factor on the learning rate (default 1 each).
        stop: the fraction of a_0 at which sleep is complete.
        patience: calls without a new best before stopping; ``None``: only ``stop`` stops.
        settle: how the sleep phase settles.
        seed: seed of the noise's generator.
        allow_unconverged: see :class:`~dynets.rules.base.Rule`.
    """

    needs = (Plastic, Lateral)
    needs_target = False

    def __init__(self, noise: float = 0.0, rates: Mapping[str, float] | None = None, stop: float = 0.05,
                 patience: int | None = None, settle: SettleOptions | None = None, seed: int = 0,
                 allow_unconverged: bool = False, inputs: str = "data") -> None:
        super().__init__(settle, None, allow_unconverged)
        if inputs not in SLEEP_INPUTS:
            raise ValueError(f"unknown sleep inputs {inputs!r}; valid: {', '.join(SLEEP_INPUTS)}")
        if noise < 0 or not 0 <= stop < 1 or (patience is not None and patience < 1):
            raise ValueError(f"need noise >= 0, 0 <= stop < 1 and patience >= 1 (or None); "
                             f"got noise={noise}, stop={stop}, patience={patience}")
        self.noise, self.stop, self.patience, self.inputs = float(noise), float(stop), patience, inputs
        self.rates = _rates(rates, {"up": 0.0, "ip": 1.0, "pi": 1.0, "down": 0.0})
        self.generator = torch.Generator().manual_seed(seed)
        self.first, self.best, self.stale, self.stopped = None, None, 0, None

    def update(self, model, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        """Settle the noisy input free; return the lateral weights' update unless the stop rule says stop."""
        self.check_model(model)
        base = x if self.inputs == "data" else x.mean().expand_as(x)
        noisy = base + self.noise * torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        condition = model.prepare(Condition(noisy))
        eq = self.settle(model, condition)
        apical = torch.cat([v.flatten(1) for v in model.apical(eq.state, condition)], 1).norm(dim=1).mean().item()
        metrics = {"steps_free": eq.steps, "converged": eq.converged_fraction, **self._watch(apical)}
        if self.stopped is not None:
            return Update({}, metrics)
        self.check_converged(metrics, {"sleep": eq})
        lateral = [n for n in model.lateral_names() if self.rates[n.split(".")[0]]]
        return Update(_descent(model.plasticity(eq.state, condition, model.weights()), self.rates, lateral), metrics)

    def _watch(self, apical: float) -> dict[str, float]:
        """Apply the stop rule to this call's ‖v_A‖; the metrics it reports."""
        if self.stopped is None:
            self.first = apical if self.first is None else self.first
            improved = self.best is None or apical < self.best
            self.best, self.stale = (apical, 0) if improved else (self.best, self.stale + 1)
            if apical <= self.stop * self.first:
                self.stopped = "complete"
            elif self.patience is not None and self.stale >= self.patience:
                self.stopped = "plateau"
            if self.stopped:
                log.info("DendriticSleep stopped (%s): ‖v_A‖ = %.3g, %.3g of its first value",
                         self.stopped, apical, apical / self.first)
        ratio = apical / self.first if self.first else 0.0
        return {"apical": apical, "apical_ratio": ratio, "stopped": float(self.stopped is not None)}

    def state_dict(self) -> dict:
        """The stop rule's state (the noise's generator is checkpointed as an attribute)."""
        return {"first": self.first, "best": self.best, "stale": self.stale, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s stop rule."""
        self.first, self.best, self.stale, self.stopped = state["first"], state["best"], state["stale"], state["stopped"]

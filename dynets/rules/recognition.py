r"""Learners of a Helmholtz machine's recognition network R, in sleep (on dreams) or on data.

A learner scores R with one scalar cost per sample and returns its gradient (estimate) by
parameter name, ``recognition.l.weight`` and ``recognition.l.bias``. The two costs:

- **sleep** (Hinton, Dayan, Frey & Neal 1995): a dream (h_0, ..., h_L) from the generative model
  comes with its cause; R is scored on recovering it, each layer from the dreamt layer below,

      C_sleep = −log q(h_1, ..., h_L | h_0) = −Σ_l log Bernoulli(h_{l+1}; σ(R_l h_l + r_l)),

  whose gradient is exactly the wake-sleep delta rule's −ΔR_l = −(h_{l+1} − σ(R_l h_l + r_l)) h_lᵀ;
- **wake** (self-supervised, no label): the data's code is R's mean-field pass
  m_0 = x, m_{l+1} = σ(R_l m_l + r_l) (the settled state of the Helmholtz machine's
  continuous-time recognition dynamics at λ = 0), scored on how well the generative pathway
  reconstructs each layer from the code above it (an autoencoder through R, then G),

      C_wake = −Σ_l log Bernoulli(m_l; σ(G_l m_{l+1} + g_l)) = −log p(x, m) + log p(m_L).

  The prior term log p(m_L) is left out: with it the cost pulls every code to the prior's mode,
  and on bars and digits the code collapsed (measured: the probe accuracy on digits fell from
  0.86 to 0.31-0.40 in 3000 steps, exact gradient or node perturbation alike).

:class:`RecognitionDelta` is wake-sleep's own sleep learner, :class:`RecognitionExact` the
exact gradient (autograd), :class:`RecognitionNodePerturbation` (Williams 1992; Fiete & Seung
2006) and :class:`RecognitionWeightPerturbation` (Jabri & Flower 1992) estimate it from the
change of the cost under noise, ĝ = (1/K) Σ_k δC_k ξ_k / σ² (antithetic δC = [C(+ξ) − C(−ξ)]/2).
"""
from __future__ import annotations

import torch

from ..models.helmholtz import Helmholtz, bernoulli_log_prob
from .perturbation import Probes
from .wake_sleep import WakeSleep

Weights = list[tuple[torch.Tensor, torch.Tensor]]


def recognition_weights(model: Helmholtz) -> Weights:
    """``[(R_l, r_l)]`` of each recognition layer, detached."""
    return [(r.weight.detach(), r.bias.detach()) for r in model.recognition]


def recognition_cost(model: Helmholtz, phase: str, data, weights: Weights | None = None,
                     noise: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The phase's cost per sample ``(*lead, batch)`` (see the module docstring) and each layer's input.

    Args:
        model: the Helmholtz machine (its generative weights score a wake phase).
        phase: ``sleep`` (``data``: the dream's layers [h_0, ..., h_L], each ``(batch, units)``) or
            ``wake`` (``data``: x ``(batch, visible)``).
        data: see ``phase``.
        weights: R's ``[(R_l, r_l)]`` (default the model's).
        noise: ξ_l added to the drive of each recognition layer ``(*lead, batch, units)`` (default none).
    """
    weights = weights if weights is not None else recognition_weights(model)
    below = data[0] if phase == "sleep" else data
    inputs, cost, rates = [], 0.0, []
    for l, (W, b) in enumerate(weights):
        inputs.append(below)
        drive = below @ W.T + b + (noise[l] if noise is not None else 0.0)
        if phase == "sleep":
            cost, below = cost - bernoulli_log_prob(data[l + 1], drive), data[l + 1]
        else:
            below = torch.sigmoid(drive)
            rates.append(below)
    if phase == "wake":
        layers = [data, *rates]
        cost = -sum(bernoulli_log_prob(layers[l], g(layers[l + 1])) for l, g in enumerate(model.generative))
    return inputs, cost


class RecognitionLearner:
    """What every learner of R shares: :meth:`sleep` and :meth:`wake` score the phase's cost
    and return ``(grads, metrics)``; a subclass gives :meth:`grads`. ``undefined`` says, by
    phase, why a learner has no cost there (:class:`~dynets.rules.SleepInterleaved` refuses it)."""

    undefined: dict[str, str] = {}

    def sleep(self, model: Helmholtz, dream: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """R's update from a dream [h_0, ..., h_L] (each ``(batch, units)``), its cause the target."""
        return self.learn(model, "sleep", list(dream))

    def wake(self, model: Helmholtz, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """R's update from data x ``(batch, visible)``, scored by the reconstruction −Σ_l log p(m_l | m_{l+1}) (no label)."""
        return self.learn(model, "wake", x)

    def learn(self, model: Helmholtz, phase: str, data) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The gradients of the phase's batch-mean cost and ``{phase}_cost`` (nats per sample, no noise)."""
        with torch.no_grad():
            grads, metrics = self.grads(model, phase, data)
            metrics[f"{phase}_cost"] = recognition_cost(model, phase, data)[1].mean().item()
        return grads, metrics

    def grads(self, model: Helmholtz, phase: str, data) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError


def _named(weights_grads: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    grads = {}
    for l, (gw, gb) in enumerate(weights_grads):
        grads[f"recognition.{l}.weight"], grads[f"recognition.{l}.bias"] = gw, gb
    return grads


class RecognitionDelta(RecognitionLearner):
    """Wake-sleep's sleep learner (Hinton et al. 1995): the delta rule
    ΔR_l ∝ (h_{l+1} − σ(R_l h_l + r_l)) h_lᵀ on the dream. On data there is no cause to predict,
    so its wake cost is undefined (:class:`~dynets.rules.SleepInterleaved` refuses it as a wake learner)."""

    undefined = {"wake": "its targets are the dream's causes, and data come with none"}

    def grads(self, model: Helmholtz, phase: str, data) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if phase != "sleep":
            raise ValueError(f"RecognitionDelta has no cost in the {phase} phase: {self.undefined['wake']}")
        layers = [h[None] for h in data]
        return WakeSleep.recognition_grads(model, layers, layers[0].new_ones(1, len(data[0]))), {}


class RecognitionExact(RecognitionLearner):
    """The exact gradient of the phase's batch-mean cost by autograd (in sleep the delta rule's,
    up to rounding; on data, backprop through the recognition pass)."""

    def grads(self, model: Helmholtz, phase: str, data) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        weights = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for W, b in recognition_weights(model)]
        with torch.enable_grad():
            cost = recognition_cost(model, phase, data, weights)[1].mean()
            flat = torch.autograd.grad(cost, [t for pair in weights for t in pair])
        return _named(list(zip(flat[::2], flat[1::2]))), {}


class _Perturbed(Probes, RecognitionLearner):
    """A perturbation learner of R: :class:`~dynets.rules.perturbation.Probes`' noise, probes and
    generator.

    Args:
        sigma: noise scale σ > 0.
        n_probes: K >= 1 independent draws per step.
        antithetic: evaluate each draw at ±ξ (else against the cost without noise).
        seed: seed of the learner's ``generator`` (checkpointed with the rule that holds it).
    """

    def __init__(self, sigma: float = 0.05, n_probes: int = 4, antithetic: bool = True, seed: int = 0) -> None:
        super().__init__(sigma, n_probes, antithetic, seed)


class RecognitionNodePerturbation(_Perturbed):
    r"""Node perturbation of R (Williams 1992; Fiete & Seung 2006): noise ξ_l ~ N(0, σ²I) on the
    drive of every recognition unit, the change δC of each sample's cost correlated with it,
    ĝ_{l,b} = (1/K) Σ_k δC_{b,k} ξ_{l,b,k} / σ² (an estimate of ∂C_b/∂u_l, u_l the unit's drive),
    and the local update ∂C/∂R_l ≈ (1/B) Σ_b ĝ_{l+1,b} h_{l,b}ᵀ, ∂C/∂r_l ≈ (1/B) Σ_b ĝ_{l+1,b}:
    each unit's own estimate times its presynaptic rates (h_l: the dreamt layer in sleep, the
    noise-free rate m_l on data). Unbiased as σ → 0; a probe whose cost is not finite is left
    out (``{phase}_dropped_probes``). K probes run as one batch.

    Args: see :class:`_Perturbed` (``sigma``, ``n_probes``, ``antithetic``, ``seed``).
    """

    def grads(self, model: Helmholtz, phase: str, data) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        weights = recognition_weights(model)
        inputs, base = recognition_cost(model, phase, data, weights)
        batch, signs = base.shape[-1], torch.tensor(self.signs).to(base)
        xi = [self.noise((self.n_probes, batch, W.shape[0]), W) for W, _ in weights]
        costs = recognition_cost(model, phase, data, weights, [signs.view(-1, 1, 1, 1) * v for v in xi])[1]
        delta = self.delta(costs, base)                                   # (K, B)
        ok = torch.isfinite(delta)
        delta = torch.where(ok, delta, 0.0) / ok.sum(0).clamp(min=1) / self.sigma ** 2
        g = [(delta[..., None] * v).sum(0) for v in xi]                   # (B, units): ∂C_b/∂u_l
        grads = _named([(gl.T @ h / batch, gl.sum(0) / batch) for gl, h in zip(g, inputs)])
        return grads, {f"{phase}_dropped_probes": int((~ok).sum())}


class RecognitionWeightPerturbation(_Perturbed):
    r"""Weight perturbation of R (Jabri & Flower 1992): every recognition weight and bias
    perturbed at once, θ + ξ with ξ ~ N(0, σ²I), and ∂L/∂θ ≈ (1/K) Σ_k δL_k ξ_k / σ², δL the change
    of the batch-mean cost (over the samples whose cost stayed finite; a probe with none is
    dropped, ``{phase}_dropped_probes``). One probe's cosine with the gradient is about 1/√N for
    N weights (Werfel, Xie & Seung 2005).

    Args: see :class:`_Perturbed` (``sigma``, ``n_probes``, ``antithetic``, ``seed``).
    """

    def grads(self, model: Helmholtz, phase: str, data) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        weights = recognition_weights(model)
        base = recognition_cost(model, phase, data, weights)[1]
        sums = [(torch.zeros_like(W), torch.zeros_like(b)) for W, b in weights]
        used = 0
        for _ in range(self.n_probes):
            xi = [(self.noise(W.shape, W), self.noise(b.shape, b)) for W, b in weights]
            costs = torch.stack([recognition_cost(model, phase, data, [(W + s * a, b + s * c) for (W, b), (a, c)
                                                                       in zip(weights, xi)])[1] for s in self.signs])
            delta = self.delta(costs, base)
            ok = torch.isfinite(delta)
            if ok.any():
                scale = delta[ok].mean() / self.sigma ** 2
                sums = [(sw + scale * a, sb + scale * c) for (sw, sb), (a, c) in zip(sums, xi)]
                used += 1
        return _named([(sw / max(used, 1), sb / max(used, 1)) for sw, sb in sums]), \
            {f"{phase}_dropped_probes": self.n_probes - used}

"""Wake-sleep (Hinton, Dayan, Frey & Neal 1995) and reweighted wake-sleep (Bornschein & Bengio 2015)."""
from __future__ import annotations

import math

import torch

from ..capabilities import Dreams, GibbsBlocked, Recognition
from ..models.helmholtz import Helmholtz, bernoulli_log_prob
from ..sampling import SampleOptions, Sleep
from ..settle import SettleOptions
from ..phases import Condition
from .base import Rule, Update

VARIANTS = ("plain", "reweighted")
Q_UPDATES = ("wake", "sleep", "both")
WAKES = ("sample", "settle")


def delta_rule(linear: torch.nn.Linear, target: torch.Tensor, source: torch.Tensor,
               weights: torch.Tensor, logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The descent direction −Δ of the weighted delta rule for ``target`` predicted from ``source``:

        ΔW = (1/B) Σ_{k,b} w_{kb} (t_{kb} − σ(W s_{kb} + c)) s_{kbᵀ},   Δc = (1/B) Σ_{k,b} w_{kb} (t_{kb} − σ(W s_{kb} + c)),

    i.e. the weighted gradient of log Bernoulli(t; σ(W s + c)); t, s ``(k, B, units)``, w ``(k, B)``;
    ``logits``: W s + c where the caller has it (it computed them for a likelihood).
    """
    error = weights[..., None] * (target - torch.sigmoid(linear(source) if logits is None else logits))
    batch = weights.shape[-1]
    return -error.flatten(0, -2).T @ source.flatten(0, -2) / batch, -error.flatten(0, -2).sum(0) / batch


class WakeSleep(Rule):
    r"""Wake-sleep learning of a :class:`~dynets.models.helmholtz.Helmholtz` machine: only local
    delta rules, each pathway trained to predict the samples of the other.

    Wake (trains the generative weights G and the prior only): causes h ~ q(h | x) from the data,
    then each layer is predicted from the one above, ΔG_l ∝ (h_l − σ(G_l h_{l+1} + g_l)) h_{l+1}ᵀ,
    Δb ∝ h_L − σ(b). Sleep (trains the recognition weights R only): a dream (h_0, ..., h_L) from the
    generative model (:class:`dynets.sampling.Sleep`, ``start="prior"``, one top-down Gibbs sweep:
    an exact sample), then each dreamt cause is recovered from the layer below,
    ΔR_l ∝ (h_{l+1} − σ(R_l h_l + r_l)) h_lᵀ. Sleep descends KL(p ‖ q), the reverse of the
    KL(q ‖ p) of the wake bound (Hinton et al. 1995).

    ``reweighted`` (Bornschein & Bengio 2015): k samples h^(i) ~ q(h | x) with normalised
    importance weights w_i ∝ p(x, h^(i)) / q(h^(i) | x); the wake update of G is the delta rule
    weighted by w_i (the gradient of the k-sample estimate of log p(x)); R is trained by the
    wake-phase q update, the same weighted delta rule on q at those samples (descending
    KL(p(h | x) ‖ q(h | x)), the direction that fits q to the true posterior), by the sleep
    update, or by the mean of the two (``q_update``).

    Args:
        variant: ``plain`` (k = 1, sleep q update) or ``reweighted``.
        k: importance samples per data point (``reweighted``).
        q_update: ``wake``, ``sleep`` or ``both`` (``reweighted``; default ``wake``).
        wake: ``sample`` (stochastic units) or ``settle`` (``plain`` only: the continuous-time
            wake phase, the rates m of the model's settled recognition dynamics taken as the
            causes, with the rule's ``settle`` options).
        dreams: dreams per sleep phase (default: the batch size).
        settle: settle options of a ``settle`` wake phase.
        seed: seed of the rule's ``generator``, the only source of its random numbers.
        allow_unconverged: see :class:`~dynets.rules.base.Rule` (a ``settle`` wake phase).

    Metrics: ``loss``, −log₂ p̂(x) per sample with the wake samples (the k-sample bound,
    ``sample`` wake); ``sleep_loss``, −log₂ q(dreamt causes | dream); ``steps_free`` and
    ``converged`` (``settle`` wake).
    """

    needs = (Recognition, Dreams, GibbsBlocked)
    needs_target = False

    def __init__(self, variant: str = "plain", k: int = 1, q_update: str | None = None, wake: str = "sample",
                 dreams: int | None = None, settle: SettleOptions | None = None, seed: int = 0,
                 allow_unconverged: bool = False) -> None:
        super().__init__(settle, allow_unconverged=allow_unconverged)
        for name, value, valid in (("variant", variant, VARIANTS), ("q_update", q_update or "wake", Q_UPDATES),
                                   ("wake", wake, WAKES)):
            if value not in valid:
                raise ValueError(f"unknown wake-sleep {name} {value!r}; valid: {', '.join(valid)}")
        if variant == "plain" and (k != 1 or q_update not in (None, "sleep")):
            raise ValueError(f"plain wake-sleep has k = 1 and the sleep q update (got k={k}, q_update={q_update!r}); "
                             "use variant='reweighted' for more samples or another q update")
        if k < 1 or (dreams is not None and dreams < 1) or (wake == "settle" and variant != "plain"):
            raise ValueError(f"need k >= 1, dreams >= 1, and wake='settle' only with the plain variant; "
                             f"got k={k}, dreams={dreams}, wake={wake!r}, variant={variant!r}")
        self.variant, self.k, self.wake_mode, self.dreams = variant, int(k), wake, dreams
        self.q_update = q_update or ("sleep" if variant == "plain" else "wake")
        self.sleep_phase = Sleep(start="prior", run=SampleOptions("gibbs", sweeps=1))
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, model: Helmholtz, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        """The wake update of G and the prior, and the q update of R; ``y`` is ignored."""
        self.check_model(model)
        model.check_input(x)
        grads, metrics = self.wake(model, x)
        if self.q_update in ("sleep", "both"):
            sleep, metrics["sleep_loss"] = self.sleep(model, self.dreams or x.shape[0])
            for name, g in sleep.items():
                grads[name] = (grads[name] + g) / 2 if name in grads else g
        return Update(grads, metrics)

    def wake(self, model: Helmholtz, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The wake phase's gradients (G and prior; R too for a wake q update) and metrics."""
        metrics = {}
        if self.wake_mode == "settle":
            eq = self.settle(model, Condition(x))
            hidden, weights, logits = [m[None] for m in eq.state], x.new_ones(1, x.shape[0]), None
            metrics.update(steps_free=eq.steps, converged=eq.converged_fraction)
            self.check_converged(metrics, {"wake": eq})
        else:
            hidden, log_q = model.proposal(x, self.k, self.generator)
            logits = model.generative_logits(hidden)   # the likelihood's and the wake delta rules'
            log_w = model.log_joint(x, hidden, logits) - log_q
            weights = torch.softmax(log_w, 0)
            metrics["loss"] = -(torch.logsumexp(log_w, 0) - math.log(self.k)).mean().item() / math.log(2)
        grads = self.generative_grads(model, [x.expand(len(weights), *x.shape), *hidden], weights, logits)
        if self.q_update in ("wake", "both"):
            grads.update(self.recognition_grads(model, [x.expand(len(weights), *x.shape), *hidden], weights))
        return grads, metrics

    def sleep(self, model: Helmholtz, n: int) -> tuple[dict[str, torch.Tensor], float]:
        """The sleep phase: ``n`` dreams, R's gradients and −log₂ q(dreamt causes | dream) per dream."""
        dream = self.sleep_phase.dream(model, Condition(batch_size=n, generator=self.generator)).state
        layers = [h[None] for h in dream]
        logits = [r(h) for r, h in zip(model.recognition, layers)]   # the metric's and the delta rules'
        log_q = sum(bernoulli_log_prob(layers[l + 1], z) for l, z in enumerate(logits))
        return self.recognition_grads(model, layers, layers[0].new_ones(1, n), logits), -log_q.mean().item() / math.log(2)

    @staticmethod
    def generative_grads(model: Helmholtz, layers: list[torch.Tensor], weights: torch.Tensor,
                         logits: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """G_l's and the prior's delta rules for the states ``layers`` = [h_0, ..., h_L], each
        ``(k, B, units)``, weighted by ``weights`` ``(k, B)`` (``logits``: the model's
        ``generative_logits`` of these states, where computed)."""
        grads = {"prior": -(weights[..., None] * (layers[-1] - torch.sigmoid(model.prior))).sum((0, 1)) / weights.shape[-1]}
        for l, g in enumerate(model.generative):
            z = logits[l] if logits is not None else None
            grads[f"generative.{l}.weight"], grads[f"generative.{l}.bias"] = delta_rule(g, layers[l], layers[l + 1], weights, z)
        return grads

    @staticmethod
    def recognition_grads(model: Helmholtz, layers: list[torch.Tensor], weights: torch.Tensor,
                          logits: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """R_l's delta rules for the states ``layers`` = [h_0, ..., h_L] (as :meth:`generative_grads`;
        ``logits``: R_l h_l + r_l, where computed)."""
        grads = {}
        for l, r in enumerate(model.recognition):
            z = logits[l] if logits is not None else None
            grads[f"recognition.{l}.weight"], grads[f"recognition.{l}.bias"] = delta_rule(r, layers[l + 1], layers[l], weights, z)
        return grads

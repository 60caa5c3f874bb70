"""Boltzmann learning with a free-running phase (Ackley, Hinton & Sejnowski 1985): Hebbian on the
data, anti-Hebbian on the dreams of persistent chains (Tieleman 2008) or of k-step contrastive
divergence (Hinton 2002)."""
from __future__ import annotations

import torch

from ..capabilities import Bipartite, GibbsBlocked
from ..models.boltzmann import BoltzmannMachine
from ..sampling import SampleOptions, Sleep
from ..phases import Condition, State
from .base import Rule, Update

# Where the free phase's chains start: kept from the previous step, or at the batch's data.
STARTS = {"pcd": "persistent", "cd": "data"}


class BoltzmannLearning(Rule):
    r"""The Boltzmann machine learning rule: the gradient of the log-likelihood, a difference of
    the correlations of a clamped ("awake") and a free-running ("dreaming") phase,

        ΔW ∝ ⟨v hᵀ⟩_clamped − ⟨v hᵀ⟩_free,   Δa ∝ ⟨v⟩_clamped − ⟨v⟩_free,   Δb ∝ ⟨h⟩_clamped − ⟨h⟩_free,

    written in the descent convention, ``p.grad = −Δθ`` (Ackley, Hinton & Sejnowski 1985).

    Both phases use the exact conditional expectation of the hidden units, h = p(h = 1 | v) =
    σ(b + vW), in place of a sample of them (its average over v is the same, with less noise):
    in the clamped phase v is the batch's data, so its statistics are exact for the batch; in
    the free phase v is the visible state of the chains after ``k`` block-Gibbs sweeps
    (:func:`dynets.sampling.sample`; a sweep draws h given v, then v given h).

    - ``free="pcd"`` (persistent contrastive divergence, Tieleman 2008): ``chains`` chains
      continue from where the previous step left them (random at the first step). With small
      steps they stay near the model's distribution, so the update follows the likelihood's
      gradient. The chains are in :meth:`state_dict`, so a checkpointed run resumes exactly.
    - ``free="cd"`` (contrastive divergence, Hinton 2002): one chain per data vector, started
      at it, run ``k`` sweeps: a biased estimate, cheap and low in variance.

    Every random number is drawn from the rule's ``generator`` (seeded with ``seed``).

    Args:
        free: ``pcd`` or ``cd``.
        k: Gibbs sweeps of the free phase per step (>= 1).
        chains: the number of persistent chains (``pcd``; ``cd`` runs one per data vector).
        seed: seed of the rule's generator.

    Metrics: ``reconstruction_error``, the mean squared error of the mean-field reconstruction
    σ(a + W σ(b + Wᵀx)) of the batch; ``chain_changed``, the fraction of the chains' units
    that changed in their last sweep (near 0: the chains are stuck in a mode).
    """

    needs = (Bipartite, GibbsBlocked)
    needs_target = False

    def __init__(self, free: str = "pcd", k: int = 1, chains: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if free not in STARTS:
            raise ValueError(f"unknown free phase {free!r}; valid: {', '.join(STARTS)}")
        if k < 1 or chains < 1:
            raise ValueError(f"need k >= 1 Gibbs sweeps and chains >= 1; got k={k}, chains={chains}")
        self.free, self.k, self.chains = free, int(k), int(chains)
        self.sleep = Sleep(start=STARTS[free], run=SampleOptions(method="gibbs", sweeps=self.k))
        self.generator = torch.Generator().manual_seed(seed)
        self.chain: State | None = None   # the persistent chains' (v, h), pcd only

    def update(self, model: BoltzmannMachine, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        """The gradients ⟨·⟩_free − ⟨·⟩_clamped for the batch ``x`` ``(batch, n_visible)``;
        ``y`` is ignored (the rule learns without labels)."""
        self.check_model(model)
        if x.dim() != 2 or x.shape[1] != model.sizes[0]:
            raise ValueError(f"x of shape {tuple(x.shape)} does not match the machine: it needs (batch, {model.sizes[0]})")
        with torch.no_grad():
            dream = self.dream(model, x)
            awake, asleep = statistics(model, x), statistics(model, dream.state[0])
            grads = {name: asleep[name] - awake[name] for name in awake}
            error = (torch.sigmoid(model.visible_field(torch.sigmoid(model.hidden_field(x)))) - x).pow(2).mean()
            error, changed = torch.stack([error, dream.changed.mean().to(error.dtype)]).tolist()
        return Update(grads, {"reconstruction_error": error, "chain_changed": changed})

    def dream(self, model: BoltzmannMachine, x: torch.Tensor):
        """The free phase: ``k`` Gibbs sweeps from the persistent chains (``pcd``) or from ``x`` (``cd``)."""
        if self.free == "cd":
            condition = Condition(batch_size=len(x), generator=self.generator)
            return self.sleep.dream(model, condition, data=(x, x.new_zeros(len(x), model.sizes[1])))
        chain = None if self.chain is None else tuple(s.to(x.device, x.dtype) for s in self.chain)
        dream = self.sleep.dream(model, Condition(batch_size=self.chains, generator=self.generator), chain=chain)
        self.chain = dream.state
        return dream

    def state_dict(self) -> dict:
        """What the rule carries between steps besides its generator: the persistent chains."""
        return {"chain": None if self.chain is None else [s.clone() for s in self.chain]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s chains (a checkpoint's: the run continues them exactly)."""
        chain = state["chain"]
        if chain is not None and (len(chain) != 2 or chain[0].shape[0] != self.chains):
            raise ValueError(f"the saved chains (shapes {[tuple(s.shape) for s in chain]}) are not the "
                             f"(v, h) of {self.chains} chains this rule runs")
        self.chain = None if chain is None else tuple(chain)


def statistics(model: BoltzmannMachine, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: ⟨·⟩}``: ⟨v hᵀ⟩, ⟨v⟩, ⟨h⟩ over the batch ``v``, with h = p(h = 1 | v) exactly."""
    h = torch.sigmoid(model.hidden_field(v))
    return {"weight": v.T @ h / len(v), "visible_bias": v.mean(0), "hidden_bias": h.mean(0)}

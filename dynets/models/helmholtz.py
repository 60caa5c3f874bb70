"""The Helmholtz machine (Dayan, Hinton, Neal & Zemel 1995): a generative sigmoid belief net
and a recognition net that infers its causes, both of stochastic binary units."""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..likelihood import MAX_ENUMERATED, binary_states
from ..phases import Block, Condition, State, VectorField
from .base import DynamicalModel

ENUMERATED_CHUNK = 16   # hidden bits enumerated at once by log_prob: 2^16 states per chunk
ROWS_CHUNK = 256        # data rows at once: a chunk's (rows, states) table stays ~130 MB in float64


def bernoulli_log_prob(v: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ_units log p(v) of binary v under independent units on with probability σ(logits)."""
    return (v * logits - F.softplus(logits)).sum(-1)


def bernoulli(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Binary units on with probability σ(logits), drawn on the generator's device."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=generator.device)
    return (u.to(logits.device) < torch.sigmoid(logits)).to(logits.dtype)


def _linear(n_in: int, n_out: int, scale: float, generator: torch.Generator) -> nn.Linear:
    """An ``nn.Linear`` with weights ~ N(0, scale²) from ``generator`` and zero bias."""
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)   # no draw from the global generator
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=generator) * scale)
        layer.bias.zero_()
    return layer


class Helmholtz(DynamicalModel):
    r"""A Helmholtz machine of binary {0, 1} layers h_0 = x (visible), h_1, ..., h_L (top).

    Generative model (top-down, the predictive feedback), a sigmoid belief net:

        p(h_L) = Π σ(b)^{h_L} (1 − σ(b))^{1−h_L},   p(h_l | h_{l+1}) = Bernoulli(σ(G_l h_{l+1} + g_l)).

    Recognition model (bottom-up): q(h_{l+1} | h_l) = Bernoulli(σ(R_l h_l + r_l)).

    Sampling (:func:`dynets.sampling.sample`): :meth:`gibbs_blocks` lists the layers top-down,
    each with its generative logits as the energy gap, so one sweep from any start is an exact
    ancestral sample (a dream). Evaluation: :meth:`log_prob` (exact, by enumerating the hidden
    states), :meth:`proposal` and :meth:`log_joint` (importance sampling, q as the proposal).

    Continuous-time variant (for :func:`dynets.settle`), rates m_l ∈ (0, 1), ``dm/dt = g(m) − m``:
    with data x (m_0 = x, state ``(m_1, ..., m_L)``), the recognition pathway with the
    generative prediction of the layer below fed back,

        g_l(m) = σ(R_{l−1} m_{l−1} + r_{l−1} + λ G_{l−1}ᵀ (m_{l−1} − σ(G_{l−1} m_l + g_{l−1}))),

    where λ = ``feedback_gain`` and the fed-back term is ∂/∂m_l of log p(m_{l−1} | m_l), so it moves
    m_l toward causes that explain the layer below (λ = 0: the recognition pass, where
    :meth:`init_state` starts); with no data (state ``(m_0, ..., m_L)``), the generative mean
    field g_L = σ(b), g_l = σ(G_l m_{l+1} + g_l).

    Args:
        sizes: ``[visible, hidden..., top]``, at least two layers.
        feedback_gain: λ >= 0 of the continuous-time wake phase.
        init_scale: standard deviation of the initial weights (biases start at 0).
        seed: seed of the initial weights (a ``torch.Generator`` of its own).

    Parameters: ``generative.l`` (G_l, g_l: layer l from l+1), ``prior`` (b),
    ``recognition.l`` (R_l, r_l: layer l+1 from l).
    """

    supervised = False
    needs_input = False
    unit_values = (0.0, 1.0)

    def __init__(self, sizes: list[int], feedback_gain: float = 0.0, init_scale: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes [visible, ..., top], got {list(sizes)}")
        if feedback_gain < 0 or init_scale < 0:
            raise ValueError(f"need feedback_gain >= 0 and init_scale >= 0, got {feedback_gain}, {init_scale}")
        self.sizes, self.feedback_gain = [int(n) for n in sizes], float(feedback_gain)
        self.in_features, self.out_features = self.sizes[0], self.sizes[-1]
        g = torch.Generator().manual_seed(seed)
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        self.generative = nn.ModuleList(_linear(above, below, init_scale, g) for below, above in pairs)
        self.recognition = nn.ModuleList(_linear(below, above, init_scale, g) for below, above in pairs)
        self.prior = nn.Parameter(torch.zeros(self.sizes[-1]))

    # ---- checks --------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is ``(batch, visible)`` and binary (0 or 1 everywhere)."""
        super().check_input(x)
        if not ((x == 0) | (x == 1)).all():
            raise ValueError("Helmholtz needs binary data (every value 0 or 1): its visible units are "
                             "binary; binarise the data first (e.g. x > 0.5)")

    def check_condition(self, condition: Condition) -> None:
        super().check_condition(condition)
        if condition.beta != 0.0 or condition.noise:
            raise ValueError("Helmholtz has no read-out cost and no drive noise: pass a Condition "
                             "without beta or noise")

    # ---- the generative model as a Gibbs sampler ---------------------------------------------

    def gibbs_blocks(self, condition: Condition) -> list[tuple[tuple[int, ...], Callable]]:
        """The layers top-down, each with its generative logits: one sweep is an exact dream.
        Only the top layers may be clamped (a clamp below a free layer would need the posterior)."""
        if condition.x is not None:
            raise ValueError("the generative sweep runs with no input: pass Condition(batch_size=n, generator=g) "
                             "(to infer causes of data, use proposal)")
        self.check_condition(condition)
        n = len(self.sizes)
        clamped = sorted(l % n for l in condition.clamp)
        if clamped != list(range(n - len(clamped), n)):
            raise ValueError(f"only the top layers of a Helmholtz dream may be clamped (a top-down sweep does "
                             f"not condition on layers below); got clamps on layers {clamped} of 0..{n - 1}")
        top = lambda state: [self.prior.expand(state[-1].shape)]
        below = [((l,), lambda state, l=l: [self.generative[l](state[l + 1])]) for l in range(n - 2, -1, -1)]
        return [((n - 1,), top), *below]

    def prior_state(self, condition: Condition) -> State:
        """The top layer drawn from its prior from ``condition.generator``, the layers below off."""
        rest = self._zeros(condition.batch, self.sizes)
        return (*rest[:-1], bernoulli(self.prior.detach().expand(rest[-1].shape), condition.generator))

    def _zeros(self, batch: int, sizes: list[int]) -> State:
        return tuple(self.prior.new_zeros(batch, n) for n in sizes)

    # ---- likelihoods ---------------------------------------------------------------------------

    def log_joint(self, x: torch.Tensor, hidden: list[torch.Tensor],
                  logits: list[torch.Tensor] | None = None) -> torch.Tensor:
        """log p(x, h_1, ..., h_L) ``(*lead,)`` for x ``(batch, visible)`` and each h_l
        ``(*lead, units)`` (lead: e.g. ``(k, batch)``); ``logits``: the
        :meth:`generative_logits` of ``hidden`` where the caller has them."""
        layers = [x, *hidden]
        total = bernoulli_log_prob(layers[-1], self.prior)
        for l, z in enumerate(logits if logits is not None else self.generative_logits(hidden)):
            total = total + bernoulli_log_prob(layers[l], z)
        return total

    def generative_logits(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """G_l h_{l+1} + g_l for each l: the top-down prediction of layer l from ``hidden`` = [h_1, ..., h_L]."""
        return [g(h) for g, h in zip(self.generative, hidden)]

    def proposal(self, x: torch.Tensor, k: int, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
        """k recognition samples of the hidden layers given x ``(batch, visible)``: each layer
        ``(k, batch, units)``, and log q(h | x) ``(k, batch)``."""
        self.check_input(x)
        below, hidden = x.expand(k, *x.shape), []
        log_q = x.new_zeros(k, x.shape[0])
        for r in self.recognition:
            logits = r(below)
            below = bernoulli(logits, generator)
            log_q = log_q + bernoulli_log_prob(below, logits)
            hidden.append(below)
        return hidden, log_q

    def reconstruct(self, state: State, condition: Condition) -> torch.Tensor:
        """``(batch, visible)`` the generative mean σ(G_0 h_1 + g_0) of the visible units given the
        settled rates h_1 of the first hidden layer (``state[0]``)."""
        return torch.sigmoid(self.generative[0](state[0]))

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) ``(batch,)`` in nats, float64, by enumerating every joint state of the
        hidden layers (at most ``MAX_ENUMERATED`` hidden units), in chunks of 2^16 states."""
        self.check_input(x)
        hidden = sum(self.sizes[1:])
        if hidden > MAX_ENUMERATED:
            raise ValueError(f"exact log p(x) enumerates the 2^{hidden} states of the {hidden} hidden units; at most "
                             f"{MAX_ENUMERATED} are enumerated: use dynets.likelihood.importance_log_prob")
        model = copy.deepcopy(self).double()   # exact enumeration sums many small terms
        inner = binary_states(min(hidden, ENUMERATED_CHUNK), torch.float64, x.device)
        outer = binary_states(hidden - inner.shape[1], torch.float64, x.device)
        out = []
        for rows in x.double().split(ROWS_CHUNK):
            total = rows.new_full((rows.shape[0],), -math.inf)
            for bits in outer:
                states = torch.cat([bits.expand(len(inner), -1), inner], 1)
                total = torch.logaddexp(total, model._log_marginal_chunk(rows, states))
            out.append(total)
        return torch.cat(out)

    def _log_marginal_chunk(self, x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """log Σ_h p(x, h) ``(batch,)`` over the hidden states ``(m, hidden)`` (h_1 first)."""
        layers = list(states.split(self.sizes[1:], dim=1))
        log_h = bernoulli_log_prob(layers[-1], self.prior)
        for l in range(1, len(layers)):
            log_h = log_h + bernoulli_log_prob(layers[l - 1], self.generative[l](layers[l]))
        logits = self.generative[0](layers[0])                         # (m, visible)
        log_x = x @ logits.T - F.softplus(logits).sum(1)               # log p(x | h_1): (batch, m)
        return torch.logsumexp(log_x + log_h, 1)

    # ---- continuous time ------------------------------------------------------------------------

    def init_state(self, condition: Condition) -> State:
        """The rest state: with data, the recognition pass m_l = σ(R_{l−1} m_{l−1} + r_{l−1});
        without, the generative mean field from the prior down."""
        with torch.no_grad():
            if condition.x is None:
                state = [torch.sigmoid(self.prior).expand(condition.batch, -1)]
                for g in reversed(self.generative):
                    state.insert(0, torch.sigmoid(g(state[0])))
                return tuple(state)
            state = [condition.x.to(self.dtype)]
            for r in self.recognition:
                state.append(torch.sigmoid(r(state[-1])))
            return tuple(state[1:])

    def _targets(self, condition: Condition) -> list[Callable[[State], torch.Tensor]]:
        """g_l(state) of each state layer, in state order (see the class docstring)."""
        if condition.x is None:
            n = len(self.sizes)
            down = [lambda s, l=l: torch.sigmoid(self.generative[l](s[l + 1])) for l in range(n - 1)]
            return down + [lambda s: torch.sigmoid(self.prior).expand(s[-1].shape)]
        x, lam = condition.x.to(self.dtype), self.feedback_gain

        def up(l: int) -> Callable[[State], torch.Tensor]:   # state index l is layer l + 1
            def g(s: State) -> torch.Tensor:
                below = x if l == 0 else s[l - 1]
                drive = self.recognition[l](below)
                if lam:
                    error = below - torch.sigmoid(self.generative[l](s[l]))
                    drive = drive + lam * error @ self.generative[l].weight
                return torch.sigmoid(drive)
            return g

        return [up(l) for l in range(len(self.recognition))]

    def dynamics(self, condition: Condition) -> VectorField:
        """dm/dt = g(m) − m (see the class docstring)."""
        self.check_condition(condition)
        targets = self._targets(condition)
        return lambda t, state: tuple(g(state) - s for g, s in zip(targets, state))

    def blocks(self, condition: Condition) -> list[Block]:
        """Gauss–Seidel blocks: one layer each, in the order the signal flows (bottom-up with
        data, top-down without)."""
        self.check_condition(condition)
        order = list(enumerate(self._targets(condition)))
        order = order if condition.x is not None else order[::-1]
        return [((l,), lambda s, g=g: [g(s)]) for l, g in order]


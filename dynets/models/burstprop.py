"""Burst-dependent plasticity's deep rate network: pyramidal units that signal bottom-up with
their event rate and top-down with their burst rate (Payeur, Guerguiev, Zenke, Richards & Naud
2021, "Burst-dependent synaptic plasticity can coordinate learning in hierarchical cortical
circuits", Nat. Neurosci. 24:1010; the deep network of its Figs. 5–7, code jordan-g/Burstprop)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn.functional import linear

from ..phases import Condition, State, VectorField, by_layer
from .base import DynamicalModel

FEEDBACK_MODES = ("random", "tied", "learned")
HIDDEN_SLOPE = 0.25
"""σ'(0): the burst probability's slope where the cancelled apical potential leaves it, p = σ(0) = ½."""


class BurstNetwork(DynamicalModel):
    r"""Layers l = 1..N of pyramidal units with an event rate e_l (soma) and a burst probability
    p_l (apical dendrite); the burst rate is b_l = p_l ⊙ e_l. Each relaxes as ds/dt = g(s) − s to

        e_l = σ(W_l e_{l−1} + c_l)                                   (e_0 = x; events go up)
        p_l = σ(u_l),  u_l = h(e_l) ⊙ B_lᵀ((p_{l+1} − κ p̄_{l+1}) ⊙ e_{l+1})     (hidden; bursts come down)
        p_N = p̄ (1 − β h(e_N) ⊙ ∂C/∂e_N)                             (output; the teacher)

    with h(e) = 1 − e, so that e ⊙ h(e) = σ'. Without a teacher (β = 0) the output bursts at its
    baseline p̄; for the squared error the taught output is p̄(1 + β h(e_N)(t − e_N)), the
    published code's teacher at β = 1. B_l (the shape of W_{l+1}) carries the burst rate of
    layer l+1 down: fixed and random (``feedback_mode="random"``, feedback alignment), tied to W_{l+1}
    (``"tied"``), or trained with W_{l+1}'s own update (``"learned"``, as the paper's code
    does). With ``cancel`` (κ = 1) the apical potential subtracts what the events would carry at
    the baseline burst probabilities (p̄ at the output, σ(0) = ½ in hidden layers): the role of
    the paper's recurrent inhibition, which its code learns to cancel u in the phase without
    teacher; here it is exact, so without a teacher u = 0 and every hidden p_l = ½. Without
    (κ = 0) u is the raw top-down input, as the code with ``recurrent_input=False``.

    The state settles in one sweep down the cascade (events bottom-up, bursts top-down), so a
    steady state is also given in closed form (:meth:`feedforward`); the events do not depend on
    the bursts, so the teacher changes only the burst probabilities. With B_l = W_{l+1} and
    κ = 1, to first order in β the change of burst rate is b_l^β − b_l^0 = −β g_l δ_l, backprop's
    δ_l = ∂L/∂a_l (a_l = W_l e_{l−1} + c_l) with g_N = p̄ and g_l = g_{l+1}/4 (:meth:`burst_gains`).

    State: ``(e_1, p_1, e_2, p_2, ..., e_N, p_N)``; the read-out is e_N. Parameters
    ``layers.{l}.weight`` and ``.bias`` (W_{l+1}, c_{l+1}) and ``feedback.{l}.weight`` (B_{l+1},
    absent when tied).

    Args:
        sizes: ``[n_0 (input), n_1, ..., n_N (output)]``.
        p_baseline: p̄, the output's burst probability without a teacher, in (0, 1) (code: 0.2).
        feedback_mode: ``random`` (fixed), ``tied`` or ``learned`` (the names of :class:`~dynets.models.Asymmetric`).
        feedback_std: std of the random feedback weights' normal init (code: 1.0).
        cancel: subtract the events' share of the top-down input (κ = 1) or not (κ = 0).
    """

    def __init__(self, sizes: list[int], p_baseline: float = 0.2, feedback_mode: str = "random",
                 feedback_std: float = 1.0, cancel: bool = True) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes, got {list(sizes)}")
        if feedback_mode not in FEEDBACK_MODES:
            raise ValueError(f"unknown feedback_mode {feedback_mode!r}; valid: {', '.join(FEEDBACK_MODES)}")
        if not 0 < p_baseline < 1 or not feedback_std >= 0:
            raise ValueError(f"need 0 < p_baseline < 1 (a probability) and feedback_std >= 0; "
                             f"got p_baseline={p_baseline}, feedback_std={feedback_std}")
        self.sizes, self.feedback_mode, self.cancel = [int(n) for n in sizes], feedback_mode, bool(cancel)
        self.p_baseline, self.n = float(p_baseline), len(self.sizes) - 1
        self.in_features, self.out_features = self.sizes[0], self.sizes[-1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes, self.sizes[1:]))
        for layer in self.layers:   # the published code's init
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.feedback = nn.ParameterList() if feedback_mode == "tied" else nn.ParameterList(
            nn.Parameter(torch.randn_like(l.weight) * feedback_std, requires_grad=feedback_mode == "learned")
            for l in self.layers[1:])

    def feedback_weights(self) -> list[torch.Tensor]:
        """B_l of each hidden layer l (bottom first), the shape of W_{l+1}: its own or W_{l+1}."""
        return [l.weight for l in self.layers[1:]] if self.feedback_mode == "tied" else list(self.feedback)

    def named_feedback(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, B_l)`` of its own feedback weights (none when tied), bottom first."""
        return [(f"feedback.{l}", p) for l, p in enumerate(self.feedback)]

    def baselines(self) -> list[float]:
        """p̄_l, each layer's burst probability without a teacher when cancelled: ½ hidden, p̄ at the output."""
        return [0.5] * (self.n - 1) + [self.p_baseline]

    def burst_gains(self) -> list[float]:
        """g_l per layer, bottom first: b_l^β − b_l^0 ≈ −β g_l δ_l (tied, cancelled, β → 0)."""
        return [self.p_baseline * HIDDEN_SLOPE ** (self.n - 1 - l) for l in range(self.n)]

    def init_state(self, condition: Condition) -> State:
        b, dt, dev = condition.batch, self.dtype, self.layers[0].weight.device
        return tuple(torch.zeros(b, n, dtype=dt, device=dev) for n in self.sizes[1:] for _ in range(2))

    def output(self, state: State) -> torch.Tensor:
        """The output layer's event rate e_N."""
        return state[-2]

    def events(self, state: State) -> list[torch.Tensor]:
        """e_l of every layer, bottom first."""
        return list(state[0::2])

    def burst_probabilities(self, state: State) -> list[torch.Tensor]:
        """p_l of every layer, bottom first."""
        return list(state[1::2])

    def check_condition(self, condition: Condition) -> None:
        """The base checks, and a teacher that keeps the output's burst probability in [0, 1]."""
        super().check_condition(condition)
        if self.p_baseline * (1 + abs(condition.beta)) > 1:
            raise ValueError(f"{type(self).__name__}: beta={condition.beta} with p_baseline={self.p_baseline} "
                             "can push the output's burst probability p̄(1 ± β h(e)(t − e)) above 1; "
                             f"use |beta| <= {1 / self.p_baseline - 1:.3g} or a smaller p_baseline")

    def prepare(self, condition: Condition) -> Condition:
        """``condition`` with the first layer's drive W_1 x + c_1 computed once for the batch."""
        self.check_condition(condition)
        with torch.no_grad():
            return replace(condition, constants=self.layers[0](condition.x))

    def dynamics(self, condition: Condition) -> VectorField:
        self.check_condition(condition)
        every = range(2 * self.n)

        def f(t: torch.Tensor, state: State) -> State:
            return tuple(g - s for g, s in zip(self._targets(state, condition, every), state))

        return f

    def blocks(self, condition: Condition) -> list:
        """Gauss–Seidel blocks down the cascade: e_1, ..., e_N, then p_N, ..., p_1 (one sweep at
        Δt = 1 reaches the steady state)."""
        self.check_condition(condition)
        return [((i,), lambda s, i=i: self._targets(s, condition, (i,))) for i in self._cascade()]

    def _cascade(self) -> list[int]:
        """The state indices in the order one sweep reaches the steady state: events up, bursts down."""
        return [2 * l for l in range(self.n)] + [2 * l + 1 for l in reversed(range(self.n))]

    def feedforward(self, condition: Condition) -> State:
        """The steady state of ``condition`` in closed form: the events up, then the bursts down."""
        self.check_condition(condition)
        state = list(self.init_state(condition))
        for i in self._cascade():
            state[i] = self._targets(tuple(state), condition, (i,))[0]
        return tuple(state)

    @torch.no_grad()   # a local rule: no gradient flows through it
    def burst_plasticity(self, free: State, taught: State, condition: Condition) -> dict[str, torch.Tensor]:
        """ΔW_l = ⟨((p_l^β − p_l^0) ⊙ e_l) e_{l−1}ᵀ⟩ and Δc_l = ⟨(p_l^β − p_l^0) ⊙ e_l⟩, batch means,
        from the steady states without (``free``) and with the teacher (``taught``)."""
        rates, out = [condition.x] + self.events(taught), {}
        for l, (p_t, p_f) in enumerate(zip(self.burst_probabilities(taught), self.burst_probabilities(free))):
            post = (p_t - p_f) * rates[l + 1]
            out[f"layers.{l}.weight"], out[f"layers.{l}.bias"] = post.T @ rates[l] / len(post), post.mean(0)
        return out

    def _drive(self, l: int, state: State, condition: Condition) -> torch.Tensor:
        if l == 0 and condition.constants is not None and not torch.is_grad_enabled():
            return condition.constants   # the prepared W_1 x + c_1
        below = condition.x if l == 0 else state[2 * l - 2]
        return self.layers[l](below)

    def _apical(self, l: int, state: State) -> torch.Tensor:
        """u_l of hidden layer l (0-based): the burst rate above, less its events' baseline share."""
        e_up, p_up = state[2 * l + 2], state[2 * l + 3]
        kappa = self.baselines()[l + 1] if self.cancel else 0.0
        return (1 - state[2 * l]) * linear((p_up - kappa) * e_up, self.feedback_weights()[l].T)

    def _targets(self, state: State, condition: Condition, indices) -> list[torch.Tensor]:
        """g of the state ``indices``, with the condition's noise added to each one's drive (a_l, u_l; the output's p itself)."""
        noise, out = by_layer(condition.noise, state, "noise"), []
        for i in indices:
            l, xi = i // 2, noise.get(i, 0.0)
            if i % 2 == 0:
                out.append(torch.sigmoid(self._drive(l, state, condition) + xi))
            elif l < self.n - 1:
                out.append(torch.sigmoid(self._apical(l, state) + xi))
            else:
                out.append(self._teacher(state, condition) + xi)
        return out

    def _teacher(self, state: State, condition: Condition) -> torch.Tensor:
        e, p = state[-2], self.p_baseline
        if not condition.beta:
            return torch.full_like(e, p)
        return p * (1 - condition.beta * (1 - e) * condition.cost.grad(e, condition.target))

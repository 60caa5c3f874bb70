"""Dendritic cortical microcircuit: pyramidal neurons whose apical dendrites carry the error,
and lateral interneurons that learn to cancel the top-down input (Sacramento, Costa, Bengio &
Senn 2018, "Dendritic cortical microcircuits approximate the backpropagation algorithm")."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torch.nn.functional import linear

from ..phases import Condition, State, VectorField, by_layer
from .activations import PC_ACTIVATIONS
from .base import DynamicalModel

Weights = dict[str, torch.Tensor]
INTERNEURON_ERRORS = ("rate", "potential")


class DendriticMicrocircuit(DynamicalModel):
    r"""Pyramidal layers k = 1..N, each hidden one with its interneurons (n_{k+1} of them):

        C du_k/dt   = −g_l u_k + g_B (v_B,k − u_k) + g_A (v_A,k − u_k)                (hidden soma)
        C du_I,k/dt = −g_l u_I,k + g_D (v_I,k − u_I,k) + g_som (u_{k+1} − u_I,k)      (interneuron)
        C du_N/dt   = −g_l u_N + g_B (v_B,N − u_N) − β g_som ∂C/∂u_N                  (output)

    with the dendritic potentials instantaneous functions of the somas (rates r_k = φ(u_k),
    r_0 = x; the output's φ_N, and that of the interneurons that mirror it, may differ:
    ``output_activation``): basal v_B,k = W_up,k r_{k−1} + b_k, apical v_A,k = W_down,k r_{k+1} + W_PI,k φ(u_I,k),
    interneuron dendrite v_I,k = W_IP,k r_k + c_k. The teacher: a nudged phase (β, target of the
    condition's cost C) injects −β·g_som·∂C/∂u_N into the output soma; for the squared error this is
    a somatic conductance β·g_som with reversal potential at the target, the paper's teacher at β = 1.
    Each compartment relaxes as du/dt = (g − u)/τ toward g, the conductance-weighted mean of its
    inputs, with τ = C/(total conductance): C/(g_l + g_B + g_A) (hidden), C/(g_l + g_D + g_som)
    (interneuron), C/(g_l + g_B) (output; the teacher enters g as a current).

    State: ``(u_1, u_I1, u_2, u_I2, ..., u_{N−1}, u_I{N−1}, u_N)``. Parameters ``up.{k}.weight``
    and ``up.{k}.bias`` (W_up,k+1), ``down.{k}.weight``, ``ip.{k}.weight``, ``ip.{k}.bias`` and
    ``pi.{k}.weight`` (those of hidden layer k+1); the top-down weights are fixed (no gradient,
    ``learn_down=False``: feedback alignment, as in the paper) or learned.

    In the self-predicting state (:meth:`self_predicting_`: W_PI = −W_down, W_IP = ĝ_{k+1}
    (g_l + g_D)/g_D · W_up,k+1) the interneurons reproduce the next layer's somas, v_A = 0 with no
    teacher, and the free steady state is feed-forward (:meth:`predicted_state`): u_k = ĝ_k v_B,k
    with ĝ_k = g_B/(g_l + g_B + g_A) (g_B/(g_l + g_B) at the output). A small nudge then makes
    v_A,k ≈ −κ_k ∂L/∂r_k, backprop's error of the rates of that feed-forward map for the output
    error ε_N = φ_N'(u_N) ⊙ ∂C/∂u_N (the top-down pathway sees the output through its rate), with
    κ_{N−1} = β g_som (g_l + g_D)/(g_B (g_l + g_D + g_som)) and κ_{k−1} = κ_k g_A (g_l + g_D)/(g_B (g_l + g_D + g_som)).

    Args:
        sizes: ``[n_0 (input), n_1, ..., n_N (output)]``.
        activation: φ, one of ``tanh``, ``sigmoid``, ``relu``, ``hard_sigmoid``, ``gelu``, ``linear``.
        output_activation: φ_N of the output layer (and of the interneurons that mirror it), one of
            the same; ``None``: ``activation``. ``linear`` reads the output's rate as its potential, as
            backprop's linear read-out: with relu, an output soma below 0 has rate 0, so neither its
            Urbanczik–Senn error nor its top-down signal exists and its potential drifts unbounded.
        g_l: leak conductance (>= 0).
        g_B: basal-to-soma conductance (> 0).
        g_A: apical-to-soma conductance (>= 0).
        g_D: interneuron dendrite-to-soma conductance (> 0).
        g_som: somatic nudging conductance, of the interneurons by the next layer and of the output by the teacher (>= 0).
        C: membrane capacitance (> 0); it sets the time unit. At the default 2 every τ is >= 1.05,
            so a Gauss–Seidel sweep at Δt = 1 steps each compartment by at most 0.95 of its τ (with
            the teacher at β = 1), and Euler at Δt = 0.5 by at most half. Sweeps at Δt = 1 do not
            keep u_N and the interneurons together, though: once training has grown the loop
            gain W_up,N W_down (feedback alignment), some samples' free phases settle slowly or
            not at all, where the flow itself is stable; ``settle.step_size=0.5`` then settles them.
        learn_down: whether the top-down weights W_down are trained.
        self_predicting: start in the self-predicting state (:meth:`self_predicting_`), as the
            paper's learning experiments do; ``False``: lateral weights drawn like the others (nn.Linear's init).
        interneuron_error: the postsynaptic factor of W_IP's rule: ``rate``, φ(u_I) − φ(v̂_I) (the
            paper's), or ``potential``, u_I − v̂_I, v̂_I = g_D/(g_l + g_D) v_I. Both vanish where
            v̂_I = u_I, i.e. v_I = (g_l + g_D)/g_D · u_{k+1}, the analytic W_IP. With relu the rate
            form has no gradient where soma and dendrite are both below threshold, so an interneuron
            silent on every input stays silent while its pyramid fires (sleep from random lateral
            weights leaves such units); the potential form, the same where both are above, revives it.
    """

    def __init__(self, sizes: list[int], activation: str = "relu", g_l: float = 0.1, g_B: float = 1.0,
                 g_A: float = 0.8, g_D: float = 1.0, g_som: float = 0.8, C: float = 2.0,
                 learn_down: bool = False, self_predicting: bool = False, interneuron_error: str = "rate",
                 output_activation: str | None = None) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer sizes, got {list(sizes)}")
        output_activation = activation if output_activation is None else output_activation
        for name, value in (("activation", activation), ("output_activation", output_activation)):
            if value not in PC_ACTIVATIONS:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(PC_ACTIVATIONS)}")
        self.g = _checked(g_l=g_l, g_B=g_B, g_A=g_A, g_D=g_D, g_som=g_som, C=C)
        self.sizes, self.activation, self.learn_down = [int(n) for n in sizes], activation, bool(learn_down)
        if interneuron_error not in INTERNEURON_ERRORS:
            raise ValueError(f"unknown interneuron_error {interneuron_error!r}; valid: {', '.join(INTERNEURON_ERRORS)}")
        self.act, self.interneuron_error = PC_ACTIVATIONS[activation], interneuron_error
        self.in_features, self.out_features, self.n = self.sizes[0], self.sizes[-1], len(self.sizes) - 1
        # layer k's (0-based) activation: the hidden layers' φ, the output's own; phis: their f
        self.acts = [self.act] * (self.n - 1) + [PC_ACTIVATIONS[output_activation]]
        self.phis = [a.f for a in self.acts]
        pairs = list(zip(self.sizes[1:-1], self.sizes[2:]))   # (n_k, n_{k+1}) of each hidden layer k
        self.up = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes, self.sizes[1:]))
        self.down = nn.ModuleList(nn.Linear(b, a, bias=False).requires_grad_(self.learn_down) for a, b in pairs)
        self.ip = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.pi = nn.ModuleList(nn.Linear(b, a, bias=False) for a, b in pairs)
        if self_predicting:
            self.self_predicting_()

    def gain(self, k: int) -> float:
        """ĝ_k (0-based layer k): the soma's share of the basal potential when v_A = 0."""
        g = self.g
        return g["g_B"] / (g["g_l"] + g["g_B"] + (g["g_A"] if k < self.n - 1 else 0.0))

    def compartments(self) -> tuple[str, ...]:
        """The name of each state index: ``soma.k`` and ``interneuron.k`` (k from 1)."""
        return tuple(name for k in range(1, self.n) for name in (f"soma.{k}", f"interneuron.{k}")) + (f"soma.{self.n}",)

    def time_constants(self, condition: Condition) -> tuple[float, ...]:
        """τ per state index: C over the compartment's total conductance (the teacher's aside)."""
        g = self.g
        hidden, inter = g["C"] / (g["g_l"] + g["g_B"] + g["g_A"]), g["C"] / (g["g_l"] + g["g_D"] + g["g_som"])
        return (hidden, inter) * (self.n - 1) + (g["C"] / (g["g_l"] + g["g_B"]),)

    def init_state(self, condition: Condition) -> State:
        b, dt, dev = condition.batch, self.dtype, self.up[0].weight.device
        return tuple(torch.zeros(b, n, dtype=dt, device=dev) for n in self._state_sizes())

    def check_condition(self, condition: Condition) -> None:
        """The base checks, and a teacher conductance β·g_som that is not negative."""
        super().check_condition(condition)
        if condition.beta < 0:
            raise ValueError(f"{type(self).__name__}: beta={condition.beta} would be a negative teacher "
                             "conductance beta·g_som; nudge with beta >= 0")

    def prepare(self, condition: Condition) -> Condition:
        """``condition`` with the first layer's basal potential W_up,1 x + b_1 (constant during a
        settle with the module's own weights) computed once for every phase of the batch."""
        self.check_condition(condition)
        with torch.no_grad():
            return replace(condition, constants=self.up[0](condition.x))

    def weights(self) -> Weights:
        """``{name: parameter}``, the weights every map reads (other values may be passed in)."""
        return dict(self.named_parameters())

    def lateral_names(self) -> tuple[str, ...]:
        """The interneurons' weights: ``ip.*`` (W_IP, c) and ``pi.*`` (W_PI)."""
        return tuple(n for n, _ in self.named_parameters() if n.split(".")[0] in ("ip", "pi"))

    def dynamics(self, condition: Condition) -> VectorField:
        self.check_condition(condition)
        return self.functional_field(condition, self.weights())

    def functional_field(self, condition: Condition, weights: Weights) -> VectorField:
        """ds/dt = (g − s)/τ with ``weights`` in place of the parameters."""
        rates = [1.0 / tau for tau in self.time_constants(condition)]

        def f(t: torch.Tensor, state: State) -> State:
            g = self._targets(state, condition, weights, range(len(state)))
            return tuple((gl - s) * r for gl, s, r in zip(g, state, rates))

        return f

    def blocks(self, condition: Condition) -> list:
        """Gauss–Seidel blocks: the odd pyramidal layers, the even ones, the interneurons (their
        time constants from :meth:`time_constants`)."""
        self.check_condition(condition)
        w, n = self.weights(), self.n
        groups = [tuple(range(0, 2 * n - 1, 4)), tuple(range(2, 2 * n - 1, 4)), tuple(range(1, 2 * n - 2, 2))]
        return [(ls, lambda s, ls=ls: self._targets(s, condition, w, ls)) for ls in groups if ls]

    def apical(self, state: State, condition: Condition) -> list[torch.Tensor]:
        """v_A,k of each hidden layer, bottom first."""
        return [self._apical(k, state, self.weights()) for k in range(self.n - 1)]

    def potentials(self, state: State, condition: Condition) -> dict[str, torch.Tensor]:
        """Every compartment: ``soma.k``, ``basal.k``, ``apical.k``, ``interneuron.k``, ``dendrite.k``."""
        w, out = self.weights(), {}
        for k in range(self.n):
            out[f"soma.{k + 1}"], out[f"basal.{k + 1}"] = state[2 * k], self._basal(k, state, condition, w)
            if k < self.n - 1:
                out[f"apical.{k + 1}"] = self._apical(k, state, w)
                out[f"interneuron.{k + 1}"] = state[2 * k + 1]
                out[f"dendrite.{k + 1}"] = linear(self.phis[k](state[2 * k]), w[f"ip.{k}.weight"], w[f"ip.{k}.bias"])
        return out

    @torch.no_grad()
    def self_predicting_(self) -> "DendriticMicrocircuit":
        """Set the lateral weights to the analytic self-predicting state: W_PI = −W_down and
        W_IP = W_up,k+1·ĝ_{k+1}(g_l + g_D)/g_D (its bias likewise). Returns the model."""
        g = self.g
        for k in range(self.n - 1):
            scale = self.gain(k + 1) * (g["g_l"] + g["g_D"]) / g["g_D"]
            self.pi[k].weight.copy_(-self.down[k].weight)
            self.ip[k].weight.copy_(self.up[k + 1].weight * scale)
            self.ip[k].bias.copy_(self.up[k + 1].bias * scale)
        return self

    def predicted_state(self, condition: Condition) -> State:
        """The free steady state of a self-predicting network in closed form: u_k = ĝ_k v_B,k
        layer after layer, u_I,k = u_{k+1} (exact when the lateral weights are self-predicting)."""
        r, somas = condition.x, []
        for k, up in enumerate(self.up):
            somas.append(self.gain(k) * up(r))
            r = self.phis[k](somas[-1])
        return tuple(s for k, u in enumerate(somas) for s in ((u, somas[k + 1]) if k < self.n - 1 else (u,)))

    @torch.no_grad()   # a local rule: no gradient flows through it
    def plasticity(self, state: State, condition: Condition, weights: Weights) -> Weights:
        """Urbanczik–Senn dW/dt, batch mean: (φ(u_k) − φ(ĝ_k v_B,k)) r_{k−1}ᵀ for W_up,
        (φ(u_I) − φ(g_D/(g_l + g_D) v_I)) r_kᵀ for W_IP (u_I − g_D/(g_l + g_D) v_I with
        ``interneuron_error="potential"``), −v_A φ(u_I)ᵀ for W_PI and, when learned,
        (φ(u_k) − φ(W_down r_{k+1})) r_{k+1}ᵀ for W_down (which then learns to predict the layer
        below from the one above). Biases: the postsynaptic factor alone."""
        phi, b, g = self.phis, state[0].shape[0], self.g
        rates, out = [condition.x] + [phi[k](state[2 * k]) for k in range(self.n)], {}
        for k in range(self.n):
            post = rates[k + 1] - phi[k](self.gain(k) * self._basal(k, state, condition, weights))
            out[f"up.{k}.weight"], out[f"up.{k}.bias"] = post.T @ rates[k] / b, post.mean(0)
        for k in range(self.n - 1):
            r_inter = phi[k + 1](state[2 * k + 1])   # the interneurons mirror layer k+1, its φ too
            v_i = g["g_D"] / (g["g_l"] + g["g_D"]) * linear(rates[k + 1], weights[f"ip.{k}.weight"], weights[f"ip.{k}.bias"])
            post = r_inter - phi[k + 1](v_i) if self.interneuron_error == "rate" else state[2 * k + 1] - v_i
            out[f"ip.{k}.weight"], out[f"ip.{k}.bias"] = post.T @ rates[k + 1] / b, post.mean(0)
            out[f"pi.{k}.weight"] = -self._apical(k, state, weights).T @ r_inter / b
            if self.learn_down:
                post = rates[k + 1] - phi[k](linear(rates[k + 2], weights[f"down.{k}.weight"]))
                out[f"down.{k}.weight"] = post.T @ rates[k + 2] / b
        return out

    def _state_sizes(self) -> list[int]:
        return [n for k in range(1, self.n) for n in (self.sizes[k], self.sizes[k + 1])] + [self.sizes[-1]]

    def _basal(self, k: int, state: State, condition: Condition, w: Weights) -> torch.Tensor:
        if k == 0 and condition.constants is not None and w["up.0.weight"] is self.up[0].weight \
                and w["up.0.bias"] is self.up[0].bias and not torch.is_grad_enabled():
            return condition.constants   # the prepared W_up,1 x + b_1; weights moving online recompute it
        below = condition.x if k == 0 else self.phis[k - 1](state[2 * k - 2])
        return linear(below, w[f"up.{k}.weight"], w[f"up.{k}.bias"])

    def _apical(self, k: int, state: State, w: Weights) -> torch.Tensor:
        above, inter = self.phis[k + 1](state[2 * k + 2]), self.phis[k + 1](state[2 * k + 1])
        return linear(above, w[f"down.{k}.weight"]) + linear(inter, w[f"pi.{k}.weight"])

    def _targets(self, state: State, condition: Condition, w: Weights, layers) -> list[torch.Tensor]:
        """g of the state ``layers``: the conductance-weighted mean each compartment relaxes to,
        with the teacher's and the condition's noise currents over the compartment's leak."""
        g, noise, out = self.g, by_layer(condition.noise, state, "noise"), []
        for l in layers:
            k = l // 2
            if l % 2:   # interneuron of hidden layer k: its dendrite and the next layer's soma
                v_i = linear(self.phis[k](state[l - 1]), w[f"ip.{k}.weight"], w[f"ip.{k}.bias"])
                total, drive = g["g_l"] + g["g_D"] + g["g_som"], g["g_D"] * v_i + g["g_som"] * state[l + 1]
            elif k < self.n - 1:   # hidden soma: basal and apical dendrites
                total = g["g_l"] + g["g_B"] + g["g_A"]
                drive = g["g_B"] * self._basal(k, state, condition, w) + g["g_A"] * self._apical(k, state, w)
            else:   # output soma: basal dendrite and the teacher's current
                total, drive = g["g_l"] + g["g_B"], g["g_B"] * self._basal(k, state, condition, w)
                if condition.beta:
                    drive = drive - condition.beta * g["g_som"] * condition.cost.grad(state[l], condition.target)
            out.append((drive + noise[l] if l in noise else drive) / total)
        return out


def _checked(**conductances: float) -> dict[str, float]:
    """The conductances and capacitance as floats; raise naming one that makes the dynamics
    unstable or undefined (negative, non-finite, or zero where it is divided by)."""
    positive = ("g_B", "g_D", "C")
    for name, value in conductances.items():
        value = float(value)
        if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
            bound = "> 0" if name in positive else ">= 0"
            raise ValueError(f"{name}={value} makes the microcircuit's dynamics unstable or undefined: "
                             f"{name} must be finite and {bound}")
    return {name: float(value) for name, value in conductances.items()}

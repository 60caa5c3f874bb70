"""A free-running firing-rate network in the chaotic regime (Sompolinsky, Crisanti & Sommers 1988),
the network of Miconi 2017 (eLife 6:e20899) that learns tasks from a reward at the end of each trial."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..phases import Condition, State, VectorField
from .base import DynamicalModel


class RateRNN(DynamicalModel):
    r"""τ dx/dt = −x + W r + W_in u(t) + ξ(t),  r = tanh(x),

    x ``(batch, units)`` the units' potentials, u(t) the input and ξ(t) the perturbations (a rule's
    exploratory noise), both time series sampled every ``dt``: on [t_k, t_k + dt) the drive is
    u_k and ξ_k, and the network is integrated on that grid (:func:`dynets.trajectory.run`).
    W ~ N(0, g²/N) with g = ``gain`` > 1: chaotic spontaneous activity (Sompolinsky et al. 1988).
    W_in is fixed, uniform in [−1, 1], and zero on the output units (their response comes
    through W only). The read-out is r of the first ``out_features`` units; the next
    ``len(bias)`` units are held at x = bias (constant rates that serve as biases: their
    outgoing weights are learned). Miconi 2017: N = 200, τ = 30 ms, dt = 1 ms, g = 1.5, the
    three bias units at x = 1, 1, −1.

    A population of ``networks`` independent networks (one W each, drawn from seeds
    ``seed``, ``seed`` + 1, ...) runs in one tensor: row b of every batch is network b. With one
    network, every row of a batch runs the same W.

    The condition's ``x`` is the input series ``(batch, steps, in_features)`` and
    ``noise[0]``, if given, the perturbation series ``(batch, steps, units)`` (added to the
    drive of step k only, not held through the run as in a settle).

    Args:
        units: N, the number of units.
        in_features: the number of input channels.
        out_features: the number of output units (units 0..out_features−1).
        tau: the time constant τ.
        dt: the step Δt of the input series and of the integration; refused unless
            0 < Δt < 2τ (Euler on the leak −x/τ grows for Δt ≥ 2τ).
        gain: g, the recurrent weights' scale (g > 1: chaotic).
        bias: the potentials of the bias units, held through every trial.
        networks: the number of independent networks in the population.
        seed: network b's weights are drawn from ``torch.Generator().manual_seed(seed + b)``.
        init_scale: a trial starts at x uniform in [−init_scale, init_scale] (the bias units at
            their values).
    """

    supervised = False

    def __init__(self, units: int = 200, in_features: int = 2, out_features: int = 1, tau: float = 30.0,
                 dt: float = 1.0, gain: float = 1.5, bias: Sequence[float] = (1.0, 1.0, -1.0),
                 networks: int = 1, seed: int = 0, init_scale: float = 0.1) -> None:
        super().__init__()
        if not 0 < dt < 2 * tau:
            raise ValueError(f"dt={dt} is unstable for tau={tau}: an Euler step of dt moves x by dt/tau of its "
                             f"distance to the drive and grows for dt >= 2·tau; use 0 < dt < {2 * tau:g} "
                             f"(Miconi 2017: dt=1, tau=30)")
        if units < out_features + len(bias) + 1 or min(in_features, out_features, networks) < 1:
            raise ValueError(f"need networks, in_features, out_features >= 1 and units > out_features + "
                             f"len(bias); got units={units}, in_features={in_features}, "
                             f"out_features={out_features}, bias={list(bias)}, networks={networks}")
        self.units, self.in_features, self.out_features = int(units), int(in_features), int(out_features)
        self.tau, self.dt, self.init_scale, self.networks = float(tau), float(dt), float(init_scale), int(networks)
        self.weight = nn.Parameter(torch.stack([self._draw(seed + b, gain) for b in range(networks)]))
        self.register_buffer("input_weight", torch.stack([self._draw_input(seed + b) for b in range(networks)]))
        held = torch.zeros(units)
        held[out_features:out_features + len(bias)] = torch.tensor(list(bias), dtype=torch.float32)
        free = torch.ones(units)
        free[out_features:out_features + len(bias)] = 0.0
        self.register_buffer("held", held)
        self.register_buffer("free", free)

    def _draw(self, seed: int, gain: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.units, self.units, generator=g) * (gain / self.units ** 0.5)

    def _draw_input(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1_000_003)   # not the stream W was drawn from
        w = torch.rand(self.units, self.in_features, generator=g) * 2 - 1
        w[:self.out_features] = 0.0
        return w

    def dynamics(self, condition: Condition) -> VectorField:
        rate = self.free / self.tau   # 0 on the bias units: held
        drive = torch.einsum("bki,bui->bku", condition.x.to(self.weight.dtype), self._rows(self.input_weight,
                                                                                           condition.batch))
        if 0 in condition.noise:
            drive = drive + condition.noise[0]
        # (drive − x + W r)·rate as drive·rate − x·rate + (rate·W) r: one fused matmul-add per step.
        drive, plus, last = drive * rate, self._plus_recurrent(self.weight * rate[:, None]), drive.shape[1] - 1

        def f(t: torch.Tensor, state: State) -> State:
            x = state[0]
            k = min(math.floor(float(t) / self.dt + 1e-6), last)   # [t_k, t_k + dt) has step k's drive
            return (plus(drive[:, k] - x * rate, torch.tanh(x)),)

        return f

    def _plus_recurrent(self, weight: torch.Tensor):
        """``(base, r) -> base + W r`` per row, W = ``weight`` ``(networks, units, units)``: one matrix
        for the whole batch, or row b's own."""
        if self.networks == 1:
            return lambda base, r: torch.addmm(base, r, weight[0].T)
        # Row vectors times Wᵀ: torch's CPU bmm of (networks, 1, N) by a contiguous (networks, N, N) measured
        # 7x faster than of (networks, N, N) by (networks, N, 1) (54 against 380 µs at 3 x 200).
        transposed = weight.transpose(1, 2).contiguous()
        return lambda base, r: torch.baddbmm(base.unsqueeze(1), r.unsqueeze(1), transposed).squeeze(1)

    def _rows(self, w: torch.Tensor, batch: int) -> torch.Tensor:
        return w.expand(batch, *w.shape[1:]) if self.networks == 1 else w

    def init_state(self, condition: Condition) -> State:
        return (self.held.expand(condition.batch, -1).clone(),)

    def trial_start(self, batch: int, generator: torch.Generator) -> State:
        """The state a trial starts from: x uniform in ±``init_scale``, the bias units at their values."""
        x = (torch.rand(batch, self.units, generator=generator) * 2 - 1) * self.init_scale
        x = x.to(self.held.device)
        return (x * self.free + self.held,)

    def trial_step(self) -> float:
        """Δt, the step of the input series and of the integration."""
        return self.dt

    def perturbable(self) -> torch.Tensor:
        """``(units,)`` 1 on the units perturbations reach (all but the bias units, which are held)."""
        return self.free

    def rates(self, state: State) -> torch.Tensor:
        """r = tanh(x) ``(..., units)``."""
        return torch.tanh(state[0])

    def output(self, state: State) -> torch.Tensor:
        """The read-out r of the output units ``(..., out_features)``."""
        return torch.tanh(state[0][..., :self.out_features])

    def check_condition(self, condition: Condition) -> None:
        """Raise for an input that is not ``(batch, steps, in_features)``, a batch that is not the
        population's, or perturbations that are not ``(batch, steps, units)`` of layer 0."""
        x = condition.x
        if x is None or x.dim() != 3 or x.shape[2] != self.in_features:
            got = None if x is None else tuple(x.shape)
            raise ValueError(f"RateRNN needs x, the input series (batch, steps, {self.in_features}); got {got}")
        if self.networks > 1 and x.shape[0] != self.networks:
            raise ValueError(f"a population of {self.networks} networks runs one trial per network: the batch "
                             f"must be {self.networks}, got {x.shape[0]}")
        if set(condition.noise) - {0} or (0 in condition.noise and condition.noise[0].shape != (*x.shape[:2], self.units)):
            shapes = {k: tuple(v.shape) for k, v in condition.noise.items()}
            raise ValueError(f"RateRNN's perturbations are noise[0], (batch, steps, {self.units}) like the input "
                             f"series; got {shapes}")

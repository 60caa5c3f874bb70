"""dynets' own fixed-step loops for ``settle``: one small class per method.

A stepper has ``start(state) -> carry``, ``step(state, carry, dt) -> (state, carry)`` and
``residual(state, carry) -> ds/dt``. The carry is what the next step needs (for Euler,
ds/dt itself), so a residual check costs little or no extra evaluation. ``settle``'s
loop runs the steps between checks.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from .types import Condition, LayerMap, State, VectorField


class Dynamical(Protocol):
    """What ``settle`` needs of a model."""

    def dynamics(self, condition: Condition) -> VectorField: ...
    def init_state(self, condition: Condition) -> State: ...


class Bipartite(Protocol):
    """A model in leaky form ds/dt = g(s) − s whose even layers couple only to odd ones
    (``method="gauss_seidel"``): g of the even layers and g of the odd ones."""

    def parity_maps(self, condition: Condition) -> tuple[LayerMap, LayerMap]: ...


def euler_step(f: VectorField, t: torch.Tensor, state: State, ds: State, dt: float):
    """One Euler step from ``state`` whose ds/dt is ``ds``: the new time, state and ds/dt."""
    state = tuple(torch.add(s, d, alpha=dt) for s, d in zip(state, ds))
    t = t + dt
    return t, state, f(t, state)


def gauss_seidel_step(maps: tuple[LayerMap, LayerMap], state: State, g_even: list[torch.Tensor], dt: float):
    """One red-black sweep of ds/dt = g(s) − s from ``state`` whose even layers' g is
    ``g_even``: s ← s + Δt·(g − s) on the even layers, then on the odd ones from the new
    evens. Returns the new state and the evens' g there (the next sweep's first half,
    computed once)."""
    map_even, map_odd = maps
    state = list(state)
    state[0::2] = [_lerp(s, g, dt) for s, g in zip(state[0::2], g_even)]
    state[1::2] = [_lerp(s, g, dt) for s, g in zip(state[1::2], map_odd(state))]
    return tuple(state), map_even(state)


def _lerp(s: torch.Tensor, g: torch.Tensor, dt: float) -> torch.Tensor:
    """s + Δt·(g − s) in one op; g itself at Δt = 1 (the plain fixed-point update). g is
    cast to the state's dtype: under bf16 autocast the maps return bf16, the state stays fp32."""
    g = g.to(s.dtype)
    return g if dt == 1.0 else torch.lerp(s, g, dt)


_COMPILED: dict[Callable, Callable] = {}


def maybe_compiled(step: Callable, compile: str, device: torch.device) -> Callable:
    """``step``, compiled once per process when ``compile`` asks for it (inductor fuses
    a step's elementwise ops into a few kernels). One step, not a chunk, so that only β
    and the batch shape make variants, well under dynamo's recompile limit.
    ``compile="auto"`` compiles on CUDA only: on CPU inductor's code measured slower."""
    if compile == "on" or (compile == "auto" and device.type == "cuda"):
        if step not in _COMPILED:
            _COMPILED[step] = torch.compile(step, dynamic=False)
        return _COMPILED[step]
    return step


class Euler:
    """s ← s + Δt·f(t, s). It carries t (a tensor, so that a compiled step does not
    recompile for each t) and f(s), which is also the residual: checks are free."""

    def __init__(self, model: Dynamical, condition: Condition, compile: str, device: torch.device) -> None:
        self.f, self.step_fn = model.dynamics(condition), maybe_compiled(euler_step, compile, device)

    def start(self, state: State) -> tuple[torch.Tensor, State]:
        t = torch.zeros((), dtype=state[0].dtype, device=state[0].device)
        return t, self.f(t, state)

    def step(self, state: State, carry: tuple[torch.Tensor, State], dt: float):
        t, ds = carry
        t, state, ds = self.step_fn(self.f, t, state, ds, dt)
        return state, (t, ds)

    def residual(self, state: State, carry: tuple[torch.Tensor, State]) -> State:
        return carry[1]


class GaussSeidel:
    """Red-black Gauss–Seidel: a partitioned Euler step of ds/dt = g(s) − s that updates
    the even layers, then the odd ones from the new evens (Hopfield's asynchronous
    updates, by parity). Same fixed points and cost per step as Euler. At Δt = 1 a
    half-step sets a parity to g, for an energy model the exact minimum of E over those
    layers given the others: a sweep is exact block-coordinate descent on E (as in
    Scellier et al. 2023, "Energy-based learning algorithms for analog computing"). A
    layered net's coupling is block-tridiagonal, so near the fixed point a sweep contracts
    by ρ(J)², J the Jacobian of the Euler (Jacobi) step at Δt = 1 (Young 1950): about
    half the steps. It carries the evens' g; a residual check computes the odds' g."""

    def __init__(self, model: Bipartite, condition: Condition, compile: str, device: torch.device) -> None:
        if not hasattr(model, "parity_maps"):   # isinstance on a Protocol costs ~20 µs a settle
            raise TypeError(f"settle method 'gauss_seidel' needs a model in leaky form whose layers split "
                            f"into two parities that do not couple within a parity (a parity_maps method); "
                            f"{type(model).__name__} has none: use fast_euler")
        self.maps = model.parity_maps(condition)
        self.step_fn = maybe_compiled(gauss_seidel_step, compile, device)

    def start(self, state: State) -> list[torch.Tensor]:
        return self.maps[0](state)

    def step(self, state: State, carry: list[torch.Tensor], dt: float):
        return self.step_fn(self.maps, state, carry, dt)

    def residual(self, state: State, carry: list[torch.Tensor]) -> State:
        ds = list(state)
        ds[0::2] = [g - s for g, s in zip(carry, state[0::2])]
        ds[1::2] = [g - s for g, s in zip(self.maps[1](state), state[1::2])]
        return tuple(ds)


STEPPERS = {"fast_euler": Euler, "gauss_seidel": GaussSeidel}

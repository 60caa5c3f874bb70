"""dynets' own fixed-step loops for ``settle``: one small class per method.

A stepper has ``start(state) -> carry``, ``step(state, carry, dt) -> (state, carry)`` and
``residual(state, carry) -> ds/dt``. The carry is what the next step needs (for Euler,
ds/dt itself), so a residual check costs little or no extra evaluation. ``settle``'s
loop runs the steps between checks.
"""
from __future__ import annotations

from typing import Callable

import torch

from .capabilities import Blocked, ChecksCondition, Compartments, Dynamical, Sweeps
from .phases import Condition, LayerMap, State, VectorField, by_layer


def _clamps(model: Dynamical, condition: Condition) -> dict[int, torch.Tensor]:
    """The condition's clamps by layer index, after the model has checked the condition."""
    if isinstance(model, ChecksCondition):   # once per settle: a protocol check costs ~10 µs
        model.check_condition(condition)
    # The rest state only gives the layers' shapes: not built for the usual unclamped phase.
    return by_layer(condition.clamp, model.init_state(condition), "clamp") if condition.clamp else {}


def phase_field(model: Dynamical, condition: Condition) -> VectorField:
    """The model's vector field for ``condition``, checked, with clamped layers held (ds/dt = 0)."""
    clamp = _clamps(model, condition)
    f = model.dynamics(condition)
    if not clamp:
        return f

    def held(t: torch.Tensor, state: State) -> State:
        return tuple(torch.zeros_like(d) if l in clamp else d for l, d in enumerate(f(t, state)))

    return held


def phase_blocks(model: Blocked, condition: Condition) -> list[tuple[tuple[int, ...], LayerMap, tuple, tuple]]:
    """The model's Gauss–Seidel blocks for ``condition`` as ``(layers, g, steps, rates)``; a clamped
    layer's g is its clamp value. ``rates`` are 1/τ_l, the time constants of a model with
    compartments (:class:`~dynets.capabilities.Compartments`; 1 for any other model): ds_l/dt =
    rate_l·(g_l − s_l), and each layer steps by its block's declared step (default 1) times its rate."""
    clamp = _clamps(model, condition)
    rates = [1.0 / tau for tau in model.time_constants(condition)] if isinstance(model, Compartments) else None
    blocks = []
    for b in model.blocks(condition):
        layers, steps = b[0], b[2] if len(b) > 2 else (1.0,) * len(b[0])
        rate = tuple(rates[l] for l in layers) if rates else (1.0,) * len(layers)
        blocks.append((layers, b[1], tuple(a * r for a, r in zip(steps, rate)), rate))
    if not clamp:
        return blocks

    def held(layers: tuple[int, ...], g: LayerMap) -> LayerMap:
        return lambda state: [clamp[l] if l in clamp else gl for l, gl in zip(layers, g(state))]

    return [(layers, held(layers, g), steps, rate) for layers, g, steps, rate in blocks]


def euler_step(f: VectorField, t: torch.Tensor, state: State, ds: State, dt: float):
    """One Euler step from ``state`` whose ds/dt is ``ds``: the new time, state and ds/dt."""
    state = tuple(torch.add(s, d, alpha=dt) for s, d in zip(state, ds))
    t = t + dt
    return t, state, f(t, state)


def gauss_seidel_step(blocks: list, state: State, g_first: list[torch.Tensor], dt: float):
    """One sweep of ds/dt = g(s) − s from ``state`` whose first block's g is ``g_first``:
    s_l ← s_l + Δt·α_l·(g_l − s_l) block after block, each read from the newest state, α_l the
    step the block declares for layer l (over τ_l for a compartment with a time constant). Returns the new state and the first block's g there
    (the next sweep's first half, computed once)."""
    state = list(state)
    for k, (layers, g, steps, _) in enumerate(blocks):
        for l, gl, step in zip(layers, g_first if k == 0 else g(state), steps):
            state[l] = _lerp(state[l], gl, dt * step)
    return tuple(state), blocks[0][1](state)


def _lerp(s: torch.Tensor, g: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """s + w·(g − s) in one op; g itself at w = 1 (the plain fixed-point update). g and a
    tensor w are cast to the state's dtype: under bf16 autocast the maps return bf16, the
    state stays fp32."""
    g = g.to(s.dtype)
    if isinstance(w, torch.Tensor):
        return torch.lerp(s, g, w.to(s.dtype))
    return g if w == 1.0 else torch.lerp(s, g, w)


_COMPILED: dict[Callable, Callable] = {}


def compiles(compile: str, device: torch.device) -> bool:
    """Whether a loop step is compiled: ``compile="on"``, or ``"auto"`` on CUDA."""
    return compile == "on" or (compile == "auto" and device.type == "cuda")


def maybe_compiled(step: Callable, compile: str, device: torch.device) -> Callable:
    """``step``, compiled once per process when ``compile`` asks for it (inductor fuses
    a step's elementwise ops into a few kernels). One step, not a chunk, so that only β
    and the batch shape make variants, well under dynamo's recompile limit.
    ``compile="auto"`` compiles on CUDA only: on CPU inductor's code measured slower."""
    if compiles(compile, device):
        if step not in _COMPILED:
            _COMPILED[step] = torch.compile(step, dynamic=False)
        return _COMPILED[step]
    return step


class Euler:
    """s ← s + Δt·f(t, s). It carries t (a tensor, so that a compiled step does not
    recompile for each t) and f(s), which is also the residual: checks are free."""

    def __init__(self, model: Dynamical, condition: Condition, compile: str, device: torch.device) -> None:
        self.f, self.step_fn = phase_field(model, condition), maybe_compiled(euler_step, compile, device)

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
    """Block Gauss–Seidel: a partitioned Euler step of ds/dt = g(s) − s over the blocks the
    model declares (for a layered net, the even layers then the odd ones: Hopfield's
    asynchronous updates, by parity). Same fixed points and cost per step as Euler. At
    Δt = 1 a half-step sets a block to g; when g is the exact minimiser of the energy over
    the block given the rest (``LayeredHopfield``: every layer, the nudged top included),
    a sweep is exact block-coordinate descent on F (Scellier et al. 2023, "Energy-based
    learning algorithms for analog computing"). When g − s is only the block's gradient
    −∂F/∂s_B (``PredictiveCoding``), the block declares its step α: on an energy a sweep
    converges iff every block's step is below 2/λ_max(∂²F/∂s_B²) (the block-diagonal part
    of the splitting dominates; Ortega & Rheinboldt 1970, §7.4), and a fixed step of 1
    fails once a layer's curvature exceeds 2. A layered net's coupling is
    block-tridiagonal, so near the fixed point a sweep contracts by ρ(J)², J the Jacobian
    of the Euler (Jacobi) step at Δt = 1 (Young 1950): about half the steps. A model with
    compartments (:class:`~dynets.capabilities.Compartments`) relaxes each layer with its own
    time constant, ds/dt = (g − s)/τ: a sweep steps it by Δt/τ (stable for Δt/τ < 2, the
    block's exact update at Δt = τ) and checks (g − s)/τ. It carries
    the first block's g; a residual check computes the others'."""

    def __init__(self, model: Blocked, condition: Condition, compile: str, device: torch.device) -> None:
        if not isinstance(model, Blocked):   # once per settle, never per step
            raise TypeError(f"settle method 'gauss_seidel' needs a model in leaky form that declares its "
                            f"Gauss-Seidel blocks (capability Blocked: a method blocks(condition)); "
                            f"{type(model).__name__} has none: use fast_euler")
        self.blocks = phase_blocks(model, condition)
        self.step_fn = maybe_compiled(gauss_seidel_step, compile, device)

    def start(self, state: State) -> list[torch.Tensor]:
        return self.blocks[0][1](state)

    def step(self, state: State, carry: list[torch.Tensor], dt: float):
        return self.step_fn(self.blocks, state, carry, dt)

    def residual(self, state: State, carry: list[torch.Tensor]) -> State:
        ds = list(state)
        for k, (layers, g, _, rates) in enumerate(self.blocks):
            for l, gl, rate in zip(layers, carry if k == 0 else g(state), rates):
                ds[l] = gl - state[l] if rate == 1.0 else (gl - state[l]) * rate   # ds/dt = (g − s)/τ
        return tuple(ds)


def gauss_seidel(model: Blocked, condition: Condition, compile: str, device: torch.device):
    """The Gauss–Seidel stepper of a settle: the model's own sweeps where it declares them
    (capability :class:`~dynets.capabilities.Sweeps`: the same states for less work; ``None``
    where it has none for this class or condition) and nothing is compiled, else the plain
    :class:`GaussSeidel` over its blocks."""
    fused = model.sweeps(condition) if isinstance(model, Sweeps) and not compiles(compile, device) else None
    return fused if fused is not None else GaussSeidel(model, condition, compile, device)


STEPPERS = {"fast_euler": Euler, "gauss_seidel": gauss_seidel}

"""``settle``: integrate ds/dt = f(s) until every sample of the batch is at steady state.

The stop test is on the derivative, per sample: ``‖f(s_b)‖ ≤ atol + rtol·‖s_b‖`` for
all b (diffrax's steady-state test, applied batch-wide). Integration runs in chunks of
at most ``check_every`` steps with one residual check (one host sync) per chunk, because
torchdiffeq's events fire on the first sample that crosses and its adaptive solvers
stall above a residual floor (``shared/notes/settling.md``).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torchdiffeq import odeint

from .types import Condition, DivergedError, Equilibrium, State

VectorField = Callable[[torch.Tensor, State], State]
LayerMap = Callable[[State], list[torch.Tensor]]
"""g(s) of some of the layers of a model in leaky form ds/dt = g(s) − s, as a function
of the whole state."""

FIXED_GRID = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FAST = ("fast_euler", "gauss_seidel")
METHODS = FIXED_GRID + ADAPTIVE + FAST
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE = ("auto", "on", "off")


class Dynamical(Protocol):
    """What ``settle`` needs of a model."""

    def dynamics(self, condition: Condition) -> VectorField: ...
    def init_state(self, condition: Condition) -> State: ...


class Bipartite(Protocol):
    """A model in leaky form ds/dt = g(s) − s whose even layers couple only to odd ones
    (``method="gauss_seidel"``): g of the even layers and g of the odd ones."""

    def parity_maps(self, condition: Condition) -> tuple[LayerMap, LayerMap]: ...


def residual_norm(ds: State) -> torch.Tensor:
    """``(batch,)`` Euclidean norm of ds/dt over all layers of each sample."""
    # A norm per layer, combined by hypot: no copy of the layers side by side (a cat of a
    # wide layer costs more than its norm), one small op per extra layer.
    return functools.reduce(torch.hypot, [torch.linalg.vector_norm(d.flatten(1), dim=1) for d in ds])


@dataclass(frozen=True)
class SettleOptions:
    """How to settle; ``options(model, condition, init)`` calls :func:`settle` with them.

    Args:
        method: a torchdiffeq solver name (fixed-grid: ``euler``, ``rk4``, ...; adaptive:
            ``dopri5``, ...) or one of dynets' own loops: ``fast_euler`` (same steps as
            ``euler``, no torchdiffeq overhead, residual taken from the step's own ds/dt)
            and ``gauss_seidel`` (red-black partitioned Euler for layered models: same
            fixed points and cost per step, about half the steps at ``step_size=1``).
        step_size: Δt of fixed-grid methods; for adaptive ones, the chunk length unit.
        atol, rtol: steady-state tolerance ‖f(s_b)‖ ≤ atol + rtol·‖s_b‖.
        max_time: stop here, ``converged=False``, if not at steady state.
        check_every: the most steps between residual checks (each check is one host
            sync); checks are placed where the residual's decay rate predicts convergence.
        solver_rtol, solver_atol: local error tolerances of adaptive solvers.
        precision: matmul precision inside the settle: ``fp32``; ``tf32`` (TensorFloat-32
            matmuls on NVIDIA GPUs since Ampere; no effect on CPU); ``bf16`` (autocast:
            matmuls in bfloat16, the state stays fp32). bf16 settles chatter at a residual
            floor ≈ 2⁻⁸‖s‖: give them a fixed budget (``atol=0``) or an ``rtol`` above it.
        compile: dynets' own loops only: ``auto`` compiles the step with
            ``torch.compile`` on GPU and runs eager on CPU; ``on`` compiles on CPU too;
            ``off`` never.
    """

    method: str = "euler"
    step_size: float = 0.5
    atol: float = 1e-4
    rtol: float = 0.0
    max_time: float = 50.0
    check_every: int = 10
    solver_rtol: float = 1e-6
    solver_atol: float = 1e-8
    precision: str = "fp32"
    compile: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown settle method {self.method!r}; valid: {', '.join(METHODS)}")
        for name in ("step_size", "max_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"settle {name} must be > 0, got {getattr(self, name)}")
        if self.compile not in COMPILE:
            raise ValueError(f"unknown compile setting {self.compile!r}; valid: {', '.join(COMPILE)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.atol < 0 or self.rtol < 0:
            raise ValueError(f"settle tolerances must be >= 0, got atol={self.atol} rtol={self.rtol}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        # Adaptive solvers settle only down to a floor a few times their rtol; a
        # steady-state tolerance below it would never be met (notes/settling.md).
        if self.method in ADAPTIVE and self.solver_rtol > self.atol / 10:
            raise ValueError(
                f"{self.method} with solver_rtol={self.solver_rtol} stalls above the steady-state "
                f"atol={self.atol}; use solver_rtol <= atol/10 or a fixed-grid method"
            )

    @property
    def max_steps(self) -> int:
        return max(1, round(self.max_time / self.step_size))

    def __call__(self, model: Dynamical, condition: Condition, init: State | None = None,
                 *, record: bool = False) -> Equilibrium:
        return settle(model, condition, init, options=self, record=record)


def settle(model: Dynamical, condition: Condition, init: State | None = None, *,
           options: SettleOptions | None = None, record: bool = False, **kwargs) -> Equilibrium:
    """Settle ``model`` under ``condition`` from ``init`` (default: the model's rest state).

    ``kwargs`` are :class:`SettleOptions` fields (``method``, ``step_size``, ``atol``,
    ``rtol``, ``max_time``, ``check_every``, ...), used when ``options`` is not given.
    Runs under ``torch.no_grad()``; the returned state is detached.

    Returns an :class:`Equilibrium`. Reaching ``max_time`` unconverged gives
    ``converged=False``; a non-finite state raises :class:`DivergedError` naming the
    time and the layer.
    """
    opts = options if options is not None else SettleOptions(**kwargs)
    if options is not None and kwargs:
        raise TypeError("pass either options= or SettleOptions fields, not both")
    with torch.no_grad(), _precision(opts.precision, condition.x.device):
        if opts.method in FAST_STEPPERS:
            stepper = FAST_STEPPERS[opts.method](model, condition, opts, condition.x.device)
            return _fast_loop(stepper, _initial(model, condition, init), opts, record)
        f = model.dynamics(condition)
        return _odeint_loop(f, _initial(model, condition, init), opts, record)


def _initial(model: Dynamical, condition: Condition, init: State | None) -> State:
    """``init`` as a tuple, if it has the layers and shapes of the rest state; else the rest state."""
    rest = model.init_state(condition)
    if init is None:
        return rest
    init = tuple(init)
    if len(init) != len(rest) or any(a.shape != b.shape for a, b in zip(init, rest)):
        raise ValueError(f"init has shapes {[tuple(a.shape) for a in init]} but this model and batch need "
                         f"{[tuple(b.shape) for b in rest]} (one (batch, units) tensor per free layer)")
    return init


@contextlib.contextmanager
def _precision(precision: str, device: torch.device):
    """Matmul precision for the duration of one settle; global settings are restored."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class _Monitor:
    """Residual checks of one settle, and when to make the next one.

    Each check costs one host sync, which brings the per-sample residuals to the host;
    the bookkeeping on a batch of numbers is cheaper there than a dozen small device ops.
    Near a stable equilibrium every sample's residual decays geometrically, so the rate
    measured between two checks predicts the step at which the slowest sample crosses
    its tolerance; the next check is placed there (at most ``check_every`` steps ahead),
    which stops within a step or two of the fewest steps that reach the tolerance
    without checking every step.
    """

    def __init__(self, opts: SettleOptions, record: bool) -> None:
        self.opts, self.prev, self.since, self.tolerance = opts, None, 0, None
        self.trajectory = [] if record else None

    def check(self, state: State, ds: State, t: float) -> tuple[torch.Tensor, bool, int]:
        """Residual per sample (on the device), whether all converged, steps to the next check."""
        opts, residual = self.opts, residual_norm(ds)
        rows = [residual] + ([self.prev] if self.prev is not None else []) + ([residual_norm(state)] if opts.rtol else [])
        host = torch.stack(rows).double().cpu().numpy()   # the one sync
        r, prev = host[0], (host[1] if self.prev is not None else None)
        self.tolerance = opts.atol + opts.rtol * host[-1] if opts.rtol else np.full_like(r, opts.atol)
        worst = (r - self.tolerance).max()
        if not np.isfinite(worst):
            _raise_diverged(state, ds, t)
        if self.trajectory is not None:
            self.trajectory.append((t, state))
        need = self._steps_needed(r, prev, self.tolerance)
        ahead = opts.check_every if not math.isfinite(need) else min(opts.check_every, max(1, math.ceil(need)))
        self.prev, self.since = residual, ahead
        return residual, bool(worst <= 0), ahead

    def observe(self, ds: State) -> None:
        """Note the residual one step before a check (no sync), so the next prediction
        uses the current one-step decay rate instead of the mean over the last chunk."""
        self.prev, self.since = residual_norm(ds), 1

    def _steps_needed(self, r: np.ndarray, prev: np.ndarray | None, tol: np.ndarray) -> float:
        """Max over the unconverged samples of since·log(r/tol)/log(r_prev/r): the steps
        at their geometric rate; +inf where the residual did not fall."""
        if prev is None:   # no rate yet: measure it on the second step; the first is a
            return 2.0     # transient (a new nudge moves the top layer before the rest)
        late = r > tol
        if not late.any():
            return 0.0
        with np.errstate(divide="ignore"):   # tol = 0 (fixed budgets): +inf steps
            rate, gap = np.log(prev[late] / r[late]), np.log(r[late] / tol[late])
        return math.inf if (rate <= 0).any() else self.since * float((gap / rate).max())

    def equilibrium(self, state: State, t: float, residual: torch.Tensor, done: bool, steps: int,
                    nfe: int) -> Equilibrium:
        tolerance = torch.as_tensor(self.tolerance, dtype=residual.dtype, device=residual.device)
        return Equilibrium(state, t, residual, tolerance, done, steps, nfe, self.trajectory)


def _raise_diverged(state: State, ds: State, t: float) -> None:
    for layer, (s, d) in enumerate(zip(state, ds)):
        # ‖ds/dt‖ overflows before the state itself does.
        if not (torch.isfinite(s).all() and torch.isfinite(residual_norm((d,))).all()):
            raise DivergedError(f"settle diverged: non-finite state or ds/dt in layer {layer} at t={t:g}")
    raise DivergedError(f"settle diverged: non-finite tolerance at t={t:g}")


def _euler_step(f: VectorField, t: torch.Tensor, state: State, ds: State, dt: float):
    """One Euler step from ``state`` whose ds/dt is ``ds``: the new time, state and ds/dt."""
    state = tuple(torch.add(s, d, alpha=dt) for s, d in zip(state, ds))
    t = t + dt
    return t, state, f(t, state)


def _gauss_seidel_step(maps: tuple[LayerMap, LayerMap], state: State, g_even: list[torch.Tensor], dt: float):
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
    """s + Δt·(g − s) in one op; g itself at Δt = 1 (the plain fixed-point update)."""
    return g if dt == 1.0 else torch.lerp(s, g, dt)


_COMPILED: dict[Callable, Callable] = {}


def _maybe_compiled(step: Callable, opts: SettleOptions, device: torch.device) -> Callable:
    """``step``, compiled once per process when ``opts.compile`` asks for it (inductor fuses
    a step's elementwise ops into a few kernels). One step, not a chunk, so that only β
    and the batch shape make variants, well under dynamo's recompile limit.
    ``compile="auto"`` compiles on CUDA only: on CPU inductor's code measured slower."""
    if opts.compile == "on" or (opts.compile == "auto" and device.type == "cuda"):
        if step not in _COMPILED:
            _COMPILED[step] = torch.compile(step, dynamic=False)
        return _COMPILED[step]
    return step


class _Euler:
    """s ← s + Δt·f(t, s). It carries t (a tensor, so that a compiled step does not
    recompile for each t) and f(s), which is also the residual: checks are free."""

    def __init__(self, model: Dynamical, condition: Condition, opts: SettleOptions, device: torch.device) -> None:
        self.f, self.step_fn = model.dynamics(condition), _maybe_compiled(_euler_step, opts, device)

    def start(self, state: State) -> tuple[torch.Tensor, State]:
        t = torch.zeros((), dtype=state[0].dtype, device=state[0].device)
        return t, self.f(t, state)

    def step(self, state: State, carry: tuple[torch.Tensor, State], dt: float):
        t, ds = carry
        t, state, ds = self.step_fn(self.f, t, state, ds, dt)
        return state, (t, ds)

    def residual(self, state: State, carry: tuple[torch.Tensor, State]) -> State:
        return carry[1]


class _GaussSeidel:
    """Red-black Gauss–Seidel: a partitioned Euler step of ds/dt = g(s) − s that updates
    the even layers, then the odd ones from the new evens (Hopfield's asynchronous
    updates, by parity). Same fixed points and cost per step as Euler. At Δt = 1 a
    half-step sets a parity to g, for an energy model the exact minimum of E over those
    layers given the others: a sweep is exact block-coordinate descent on E (as in
    Scellier et al. 2023, "Energy-based learning algorithms for analog computing"). A
    layered net's coupling is block-tridiagonal, so near the fixed point a sweep contracts
    by ρ(J)², J the Jacobian of the Euler (Jacobi) step at Δt = 1 (Young 1950): about
    half the steps. It carries the evens' g; a residual check computes the odds' g."""

    def __init__(self, model: Dynamical, condition: Condition, opts: SettleOptions, device: torch.device) -> None:
        if not hasattr(model, "parity_maps"):   # isinstance on a Protocol costs ~20 µs a settle
            raise TypeError(f"settle method 'gauss_seidel' needs a model in leaky form whose layers split "
                            f"into two parities that do not couple within a parity (a parity_maps method); "
                            f"{type(model).__name__} has none: use fast_euler")
        self.maps = model.parity_maps(condition)
        self.step_fn = _maybe_compiled(_gauss_seidel_step, opts, device)

    def start(self, state: State) -> list[torch.Tensor]:
        return self.maps[0](state)

    def step(self, state: State, carry: list[torch.Tensor], dt: float):
        return self.step_fn(self.maps, state, carry, dt)

    def residual(self, state: State, carry: list[torch.Tensor]) -> State:
        ds = list(state)
        ds[0::2] = [g - s for g, s in zip(carry, state[0::2])]
        ds[1::2] = [g - s for g, s in zip(self.maps[1](state), state[1::2])]
        return tuple(ds)


FAST_STEPPERS = {"fast_euler": _Euler, "gauss_seidel": _GaussSeidel}


def _fast_loop(stepper, state: State, opts: SettleOptions, record: bool) -> Equilibrium:
    """dynets' own loop, in chunks between residual checks. The steppers carry the part of
    ds/dt the next step needs, so a check costs little or no extra evaluation."""
    monitor, dt, step = _Monitor(opts, record), opts.step_size, 0
    carry = stepper.start(state)
    while True:
        residual, done, ahead = monitor.check(state, stepper.residual(state, carry), step * dt)
        if done or step == opts.max_steps:
            return monitor.equilibrium(state, step * dt, residual, done, step, step + 1)
        n = min(ahead, opts.max_steps - step)
        for _ in range(n):
            before = state, carry
            state, carry = stepper.step(state, carry, dt)
        if n > 1:   # after one step, the last check already measured the state before
            monitor.observe(stepper.residual(*before))
        step += n


def _odeint_loop(f: VectorField, state: State, opts: SettleOptions, record: bool) -> Equilibrium:
    """torchdiffeq ``odeint`` over chunks between checks; a check is one extra evaluation."""
    nfe = 0

    def counted(t: torch.Tensor, s: State) -> State:
        nonlocal nfe
        nfe += 1
        return f(t, s)

    monitor, step, dt = _Monitor(opts, record), 0, opts.step_size
    while True:
        t = step * dt
        residual, done, ahead = monitor.check(state, counted(torch.tensor(t), state), t)
        if done or step >= opts.max_steps:
            return monitor.equilibrium(state, t, residual, done, step, nfe)
        n = min(ahead, opts.max_steps - step)
        state = _odeint_chunk(counted, state, t, n, opts)
        step += n


def _odeint_chunk(f: VectorField, state: State, t0: float, n: int, opts: SettleOptions) -> State:
    dt = opts.step_size
    times = torch.tensor([t0, t0 + n * dt], dtype=state[0].dtype, device=state[0].device)
    if opts.method in ADAPTIVE:
        kwargs = dict(rtol=opts.solver_rtol, atol=opts.solver_atol)
    else:
        # An explicit grid of exactly n steps: torchdiffeq's step_size grid rounds
        # (t1 - t0)/dt up and can add a sliver step to a chunk.
        grid = lambda func, y0, t: torch.linspace(t[0], t[-1], n + 1, dtype=t.dtype, device=t.device)
        kwargs = dict(options={"grid_constructor": grid})
    path = odeint(f, state, times, method=opts.method, **kwargs)
    return tuple(p[-1] for p in path)

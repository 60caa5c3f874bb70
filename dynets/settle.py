"""``settle``: integrate ds/dt = f(s) until every sample of the batch is at steady state.

The stop test is on the derivative, per sample: ``‖f(s_b)‖ ≤ atol + rtol·‖s_b‖`` for
all b (diffrax's steady-state test, applied batch-wide). Integration runs in chunks of
at most ``check_every`` steps with one residual check (one host sync) per chunk, because
torchdiffeq's events fire on the first sample that crosses and its adaptive solvers
stall above a residual floor (``shared/notes/settling.md``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torchdiffeq import odeint

from .types import Condition, DivergedError, Equilibrium, State

VectorField = Callable[[torch.Tensor, State], State]

FIXED_GRID = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FAST = ("fast_euler",)
METHODS = FIXED_GRID + ADAPTIVE + FAST
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE = ("auto", "on", "off")


class Dynamical(Protocol):
    """What ``settle`` needs of a model."""

    def dynamics(self, condition: Condition) -> VectorField: ...
    def init_state(self, condition: Condition) -> State: ...


def residual_norm(ds: State) -> torch.Tensor:
    """``(batch,)`` Euclidean norm of ds/dt over all layers of each sample."""
    # One fused norm per layer, then the norm of those: half the ops of squaring and summing.
    norms = [torch.linalg.vector_norm(d.flatten(1), dim=1) for d in ds]
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms), dim=0)


@dataclass(frozen=True)
class SettleOptions:
    """How to settle; ``options(model, condition, init)`` calls :func:`settle` with them.

    Args:
        method: a torchdiffeq solver name (fixed-grid: ``euler``, ``rk4``, ...; adaptive:
            ``dopri5``, ...) or ``fast_euler``, dynets' own Euler loop (same steps as
            ``euler``, no torchdiffeq overhead, residual taken from the step's own ds/dt).
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
        compile: ``fast_euler`` only: ``auto`` compiles the Euler step with
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
        f = model.dynamics(condition)
        state = model.init_state(condition) if init is None else _checked_init(init, model.init_state(condition))
        loop = _fast_loop if opts.method in FAST else _odeint_loop
        return loop(f, state, opts, record)


def _checked_init(init: State, rest: State) -> State:
    """``init`` as a tuple, if it has the layers and shapes of the rest state."""
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

    Each check costs one host sync. Near a stable equilibrium every sample's residual
    decays geometrically, so the rate measured between two checks predicts the step at
    which the slowest sample crosses its tolerance; the next check is placed there
    (at most ``check_every`` steps ahead), which stops within a step or two of the
    fewest steps that reach the tolerance without checking every step.
    """

    def __init__(self, opts: SettleOptions, record: bool) -> None:
        self.opts, self.prev, self.since = opts, None, 0
        self.trajectory = [] if record else None

    def check(self, state: State, ds: State, t: float) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
        """Residual and tolerance per sample, whether all converged, steps to the next check."""
        opts = self.opts
        residual = residual_norm(ds)
        tolerance = opts.atol + opts.rtol * residual_norm(state) if opts.rtol else torch.full_like(residual, opts.atol)
        excess = (residual - tolerance).max()
        need = self._steps_needed(residual, tolerance)
        worst, need = torch.stack([excess, need.to(excess.dtype)]).tolist()   # the one sync
        if not math.isfinite(worst):
            _raise_diverged(state, ds, t)
        if self.trajectory is not None:
            self.trajectory.append((t, state))
        self.prev = residual
        ahead = opts.check_every if not math.isfinite(need) else min(opts.check_every, max(1, math.ceil(need)))
        self.since = ahead
        return residual, tolerance, worst <= 0, ahead

    def observe(self, ds: State) -> None:
        """Note the residual one step before a check (no sync), so the next prediction
        uses the current one-step decay rate instead of the mean over the last chunk."""
        self.prev, self.since = residual_norm(ds), 1

    def _steps_needed(self, residual: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
        """Max over the unconverged samples of since·log(r/tol)/log(r_prev/r): the steps
        at their geometric rate; +inf where the residual did not fall (log clamped to 0)."""
        if self.prev is None:   # no rate yet: look again after one step
            return torch.ones((), dtype=residual.dtype, device=residual.device)
        steps = (residual / tolerance).log_() / (self.prev / residual).log_().clamp_(min=0)
        return torch.where(residual > tolerance, steps, 0.0).max() * self.since


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


_COMPILED: list[Callable] = []


def _chunk_runner(opts: SettleOptions, device: torch.device) -> Callable:
    """``run(f, t, state, ds, n, dt)``: n Euler steps; returns time, state, its ds/dt and
    the ds/dt one step earlier (for the monitor's rate).

    With compilation the step is compiled once (inductor fuses the elementwise ops of a
    step into a few kernels); one step, not a chunk, so that only β and the batch shape
    make variants, well under dynamo's recompile limit. ``compile="auto"`` compiles on
    CUDA only: on CPU inductor's code measured slower than eager here."""
    step = _euler_step
    if opts.compile == "on" or (opts.compile == "auto" and device.type == "cuda"):
        if not _COMPILED:
            _COMPILED.append(torch.compile(_euler_step, dynamic=False))
        step = _COMPILED[0]

    def run(f, t, state, ds, n, dt):
        for _ in range(n):
            before = ds
            t, state, ds = step(f, t, state, ds, dt)
        return t, state, ds, before

    return run


def _fast_loop(f: VectorField, state: State, opts: SettleOptions, record: bool) -> Equilibrium:
    """dynets' own Euler loop, in chunks between residual checks. A check reads the
    ds/dt that the next step needs anyway, so it costs no extra evaluation."""
    monitor, dt, step = _Monitor(opts, record), opts.step_size, 0
    run = _chunk_runner(opts, state[0].device)
    t = torch.zeros((), dtype=state[0].dtype, device=state[0].device)
    ds = f(t, state)
    while True:
        residual, tolerance, done, ahead = monitor.check(state, ds, step * dt)
        if done or step == opts.max_steps:
            return Equilibrium(state, step * dt, residual, tolerance, done, step, step + 1, monitor.trajectory)
        n = min(ahead, opts.max_steps - step)
        t, state, ds, before = run(f, t, state, ds, n, dt)
        monitor.observe(before)
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
        residual, tolerance, done, ahead = monitor.check(state, counted(torch.tensor(t), state), t)
        if done or step >= opts.max_steps:
            return Equilibrium(state, t, residual, tolerance, done, step, nfe, monitor.trajectory)
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

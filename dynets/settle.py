"""``settle``: integrate ds/dt = f(s) until every sample of the batch is at steady state.

The stop test is on the derivative, per sample: ``‖f(s_b)‖ ≤ atol + rtol·‖s_b‖ + start_rtol·‖f(s_b(0))‖``
for all b (diffrax's steady-state test, applied batch-wide, with a term relative to the sample's
residual at the start: for a nudged phase warm-started at the free equilibrium that is β·‖∂C/∂s‖). Integration runs in chunks of
at most ``check_every`` steps with one residual check (one host sync) per chunk, because
torchdiffeq's events fire on the first sample that crosses and its adaptive solvers
stall above a residual floor (``shared/notes/settling.md``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchdiffeq import odeint

from .capabilities import ChecksCondition, Compartments, Dynamical
from .conjugate import ConjugateGradient
from .steppers import STEPPERS, phase_field
from .phases import Condition, DivergedError, Equilibrium, State, VectorField, by_layer
from .precision import PRECISIONS, device_precision, matmul_precision

FIXED_GRID = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
STABLE_STEP = ("fast_euler", "euler")   # the methods whose step ``stability`` caps
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
SOLVERS = {**STEPPERS, "conjugate_gradient": ConjugateGradient}   # dynets' own loops
METHODS = FIXED_GRID + ADAPTIVE + tuple(SOLVERS)
COMPILE = ("auto", "on", "off")


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
            and ``gauss_seidel`` (partitioned Euler over the blocks a model declares,
            e.g. a layered net's even and odd layers: same fixed points and cost per
            step, about half the steps at ``step_size=1``; each block steps by
            ``step_size`` times the step it declares, 1 for an exact block minimiser);
            ``conjugate_gradient`` (preconditioned nonlinear conjugate gradient on the energy of
            a gradient flow whose curvature the model gives, capability ``Curvature``,
            :class:`dynets.conjugate.ConjugateGradient`: generative predictive coding at
            784-1024 settles in ~10 steps where ``fast_euler`` takes hundreds; each steps by
            ``step_size`` times its line step, 1 for the whole).
        step_size: Δt of fixed-grid methods; for adaptive ones, the chunk length unit.
        atol: absolute part of the steady-state tolerance ‖f(s_b)‖ ≤ atol + rtol·‖s_b‖.
        rtol: relative part of the same tolerance.
        start_rtol: a part relative to each sample's residual at the settle's start, in [0, 1):
            stop once ‖f(s_b)‖ has fallen by this factor (plus atol and rtol's parts). A phase
            nudged by β from the free equilibrium starts at ‖f‖ = |β|·‖∂C/∂s‖ (the free residual
            aside), so its displacement and the update's error both scale with β and with the
            sample's error, and an absolute atol is loose at small β or error (it can stop a
            nudged phase before its first step: a zero update) and tight at large ones. Meant
            for warm-started phases: from rest, the start's residual is the drive's size.
        max_time: stop here, ``converged=False``, if not at steady state.
        check_every: the most steps between residual checks (each check is one host
            sync); checks are placed where the residual's decay rate predicts convergence.
        solver_rtol: relative local error tolerance of adaptive solvers.
        solver_atol: absolute local error tolerance of adaptive solvers.
        precision: matmul precision inside the settle (:mod:`dynets.precision`): ``fp32``;
            ``tf32`` (TensorFloat-32 matmuls on NVIDIA GPUs since Ampere; on any other device
            the settle runs in fp32 and the log says so once); ``bf16`` (autocast: matmuls in
            bfloat16, the state stays fp32; on a CUDA device without bfloat16 an error). bf16
            rounds the state to 8 bits where it enters a matmul, so below ≈ 2⁻⁸‖s‖ the residual
            stops falling smoothly: ``gauss_seidel`` on a layered Hopfield net still reaches an
            exact fixed point of the rounded map, in more sweeps; ``fast_euler`` chatters
            (784-512-10 after 300 Fashion-MNIST steps: ‖f‖ up to 4.3e-3 ≈ 4.5e-4‖s‖, above
            ``atol=1e-3``). Give bf16 ``rtol=5e-3``, above 2⁻⁸, or a fixed budget (``atol=0``; a
            budget never converges, so a rule needs ``allow_unconverged`` to learn from it). Its
            accuracy cost, measured against fp32: docs/results/speed.md, "Mixed precision".
        stability: 0 (off), or a fraction in (0, 1): ``fast_euler`` and ``euler`` then step by
            min(``step_size``, stability·2/ρ), where ρ is the largest |eigenvalue| of the flow's
            Jacobian at the start state (:func:`spectral_radius`, 20 Jacobian-vector products).
            Explicit Euler is stable on a mode of rate λ only for Δt < 2/λ, and a flow's
            stiffness can grow as it trains (generative PC on Fashion-MNIST: λ_max(WᵀW) went from
            2.5 to 29 in 50 batches, past a step of 0.1). ``max_time`` keeps its meaning, so a
            smaller step takes more steps.
        compile: dynets' own loops only: ``auto`` compiles the step with
            ``torch.compile`` on GPU and runs eager on CPU; ``on`` compiles on CPU too;
            ``off`` never.
    """

    method: str = "euler"
    step_size: float = 0.5
    atol: float = 1e-4
    rtol: float = 0.0
    start_rtol: float = 0.0
    max_time: float = 50.0
    check_every: int = 10
    solver_rtol: float = 1e-6
    solver_atol: float = 1e-8
    precision: str = "fp32"
    stability: float = 0.0
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
        if not 0 <= self.start_rtol < 1:
            raise ValueError(f"settle start_rtol must be in [0, 1) (the fraction of each sample's starting residual "
                             f"to reach), got {self.start_rtol}")
        if not 0 <= self.stability < 1:
            raise ValueError(f"settle stability must be in [0, 1) (a fraction of Euler's limit 2/ρ), got {self.stability}")
        if self.stability and self.method not in STABLE_STEP:
            raise ValueError(f"settle stability caps the step of {', '.join(STABLE_STEP)} only; "
                             f"method={self.method!r} sets its steps otherwise")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        # A sweep with Δt = ω is successive over-relaxation, which diverges for ω ≥ 2 on
        # any system (Kahan 1958): its iteration matrix has det = (1 − ω)^n.
        if self.method == "gauss_seidel" and self.step_size >= 2:
            raise ValueError(f"gauss_seidel with step_size={self.step_size} cannot converge: a sweep with "
                             f"step_size ω is over-relaxation, which needs 0 < ω < 2 (1 is plain Gauss-Seidel)")
        if self.method == "conjugate_gradient" and self.step_size >= 2:
            raise ValueError(f"conjugate_gradient with step_size={self.step_size} overshoots the minimum along "
                             f"each direction by more than it gains: use 0 < step_size < 2 (1: the whole line step)")
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
    if isinstance(model, ChecksCondition):
        model.check_condition(condition)
    with torch.no_grad():
        state = initial_state(model, condition, init)
        if opts.stability:
            rho = spectral_radius(phase_field(model, condition), state)
            opts = replace(opts, step_size=min(opts.step_size, opts.stability * 2 / rho))
        device = state[0].device
        with matmul_precision(device_precision(opts.precision, device), device):
            if opts.method in SOLVERS:
                if opts.method in STEPPERS:   # the fixed-step loops: Δt against each time constant
                    _check_time_constants(model, condition, opts)
                stepper = SOLVERS[opts.method](model, condition, opts.compile, device)
                return _fast_loop(stepper, state, opts, record)
            return _odeint_loop(phase_field(model, condition), state, opts, record)


def _check_time_constants(model: Dynamical, condition: Condition, opts: SettleOptions) -> None:
    """Raise naming the fastest compartment when a fixed step of ``opts.step_size`` cannot follow
    its time constant τ: a step moves s by Δt/τ·(g − s), which overshoots and grows for Δt/τ ≥ 2
    (Euler's bound on the leak −s/τ alone; Gauss–Seidel's over-relaxation bound)."""
    if not isinstance(model, Compartments):
        return
    tau, name = min(zip(model.time_constants(condition), model.compartments()), key=lambda p: p[0])
    if opts.step_size >= 2 * tau:
        raise ValueError(f"settle={opts.method} with step_size={opts.step_size} cannot follow compartment "
                         f"{name!r}, whose time constant is {tau:.3g} (the shortest): a step moves it by "
                         f"step_size/τ >= 2 of its distance to g and it oscillates or diverges; use step_size < "
                         f"{2 * tau:.3g} (settle.step_size), a larger capacitance C, or an adaptive method (dopri5)")


def spectral_radius(f: VectorField, state: State, iterations: int = 20) -> float:
    """ρ ≈ the largest |eigenvalue| of ∂f/∂s at ``state`` (all samples of the batch together:
    the worst sample's), by power iteration with forward-mode Jacobian-vector products from a
    fixed start (no global random number is drawn). For a gradient flow the Jacobian is −∇²E,
    symmetric, and the estimate approaches ρ from below."""
    g = torch.Generator().manual_seed(0)
    v = tuple(torch.randn(s.shape, generator=g, dtype=s.dtype).to(s.device) for s in state)
    t = torch.zeros((), dtype=state[0].dtype, device=state[0].device)
    norm = lambda v: torch.sqrt(sum((x * x).sum() for x in v))
    for _ in range(iterations):
        n = norm(v)
        v = torch.func.jvp(lambda *s: tuple(f(t, s)), tuple(state), tuple(x / n for x in v))[1]
    return max(norm(v).item(), 1e-12)


def initial_state(model: Dynamical, condition: Condition, init: State | None) -> State:
    """The state a run under ``condition`` starts from (a settle's, a trajectory's).

    Args:
        model: the network (its ``init_state`` is the rest state).
        condition: the phase; its clamped layers are set to their values.
        init: the start, with the layers and shapes of the rest state (``None``: the rest state).
    """
    rest = model.init_state(condition)
    if init is not None:
        init = tuple(init)
        if len(init) != len(rest) or any(a.shape != b.shape for a, b in zip(init, rest)):
            raise ValueError(f"init has shapes {[tuple(a.shape) for a in init]} but this model and batch need "
                             f"{[tuple(b.shape) for b in rest]} (one (batch, *shape) tensor per free layer)")
        rest = init
    clamp = by_layer(condition.clamp, rest, "clamp")
    return tuple(clamp[l].to(s.dtype) if l in clamp else s for l, s in enumerate(rest))


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
        self.opts, self.prev, self.since, self.tolerance, self.floor = opts, None, 0, None, None
        self.trajectory = [] if record else None

    def check(self, state: State, ds: State, t: float) -> tuple[torch.Tensor, bool, int]:
        """Residual per sample (on the device), whether all converged, steps to the next check."""
        opts, residual = self.opts, residual_norm(ds)
        rows = [residual] + ([self.prev] if self.prev is not None else []) + ([residual_norm(state)] if opts.rtol else [])
        host = torch.stack(rows).cpu().double().numpy()   # the one sync (no float64 on MPS)
        r, prev = host[0], (host[1] if self.prev is not None else None)
        if self.floor is None:   # the first check is at the start: the parts that stay fixed
            self.floor = opts.atol + opts.start_rtol * r
        self.tolerance = self.floor + opts.rtol * host[-1] if opts.rtol else self.floor
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


def _fast_loop(stepper, state: State, opts: SettleOptions, record: bool) -> Equilibrium:
    """dynets' own loop, in chunks between residual checks, over a stepper of
    ``steppers.py``: it carries the part of ds/dt the next step needs, so a check costs
    little or no extra evaluation."""
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

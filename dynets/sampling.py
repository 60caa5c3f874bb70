"""Sleep phases: the network runs free ("dreams"), and samplers for stochastic units.

A sleep phase clamps nothing (unless its condition says so). :class:`Sleep` says where the
dream starts (noise, the top-level prior, a persistent chain kept between steps, or a state
reached from data) and how it runs: deterministically through :func:`dynets.settle`
(:class:`~dynets.SettleOptions`), or stochastically through :func:`sample`
(:class:`SampleOptions`): Gibbs sweeps for binary units, Langevin steps for continuous ones.
Every random number is drawn from the phase's ``condition.generator``, so a seeded run is
reproducible and resumes bit-identically.

What a model provides for Gibbs sampling (capability :class:`~dynets.capabilities.GibbsBlocked`,
the binary counterpart of ``blocks``):

- ``unit_values``: ``(off, on)``, the two values of its binary units, e.g. ``(0., 1.)`` or ``(-1., 1.)``;
- ``gibbs_blocks(condition) -> [(layers, field), ...]``: a partition of the state layers into
  blocks whose units are conditionally independent given the rest, each with
  ``field(state) -> [h_l for l in layers]``, the energy gap h = E(unit off) − E(unit on) of each
  unit given the current state. A Gibbs update sets a unit on with probability σ(h / T).
  A directed model lists its layers top-down: one sweep is then an exact ancestral sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .capabilities import ChecksCondition, Dreams, Dynamical, GibbsBlocked, describe, summary
from .settle import SettleOptions
from .steppers import _clamps, phase_field
from .phases import Condition, Equilibrium, State

SAMPLERS = ("gibbs", "langevin")
STARTS = ("noise", "prior", "persistent", "data")


@dataclass(frozen=True, eq=False)
class Sample:
    """The result of :func:`sample`, with its diagnostics.

    Attributes:
        state: the last state of the chain (detached).
        sweeps: sweeps (Gibbs) or steps (Langevin) run.
        changed: ``(batch,)`` in the last sweep, the fraction of free units that changed value
            (Gibbs), or the root-mean-square change per free unit (Langevin). A chain at a
            deterministic fixed point (T = 0) shows 0.
        trajectory: the state after every sweep when ``record=True``.
    """

    state: State
    sweeps: int
    changed: torch.Tensor
    trajectory: list[State] | None = None


def _needs(model, capability: type, method: str) -> None:
    if not isinstance(model, capability):
        raise TypeError(f"{type(model).__name__} cannot be sampled with method={method!r}: it has no "
                        f"{summary(capability)} ({describe(capability)})")


def _gibbs_sweep(blocks, clamp, values, state: State, temperature: float, generator) -> State:
    """One sweep over the blocks in order, each block resampled given the current state."""
    off, on = values
    state = list(state)
    for layers, field in blocks:
        for l, h in zip(layers, field(tuple(state))):
            if l in clamp:
                continue
            if temperature == 0:   # the deterministic asynchronous update; a unit with h = 0 keeps its value
                state[l] = torch.where(h > 0, on, torch.where(h < 0, off, state[l]))
            else:
                u = _draw(torch.rand, h, generator)
                state[l] = torch.where(u < torch.sigmoid(h / temperature), on, off).to(h.dtype)
    return tuple(state)


def _langevin_step(f, clamp, state: State, step_size: float, temperature: float, generator) -> State:
    """s ← s + ε f(s) + √(2εT) ξ on every free layer (clamped layers stay)."""
    scale = math.sqrt(2 * step_size * temperature)
    out = []
    for l, (s, d) in enumerate(zip(state, f(torch.zeros(()), state))):
        if l in clamp:
            out.append(s)
            continue
        xi = _draw(torch.randn, s, generator)
        out.append(s + step_size * d + scale * xi)
    return tuple(out)


def _draw(how: Callable, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``how`` (torch.rand or torch.randn) of ``like``'s shape and dtype, drawn on the generator's
    device (a CPU generator serves a GPU chain too) and moved to ``like``'s."""
    return how(like.shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _changed(method: str, old: State, new: State, clamp) -> torch.Tensor:
    free = [(a, b) for l, (a, b) in enumerate(zip(old, new)) if l not in clamp]
    if not free:
        return old[0].new_zeros(old[0].shape[0])   # every layer clamped: nothing moved
    units = sum(a[0].numel() for a, _ in free)   # per sample, over layers of any shape
    if method == "gibbs":
        return sum((a != b).flatten(1).sum(1) for a, b in free).to(old[0].dtype) / units
    return (sum(((a - b) ** 2).flatten(1).sum(1) for a, b in free) / units).sqrt()


@torch.no_grad()
def sample(model, condition: Condition, init: State | None = None, *, method: str = "gibbs", sweeps: int = 1,
           temperature: float = 1.0, step_size: float = 0.01, record: bool = False) -> Sample:
    """Run a chain of ``model``'s stochastic units under ``condition`` from ``init``.

    ``gibbs``: each sweep resamples the model's ``gibbs_blocks`` in order, a unit on with
    probability σ(h/T) (h its energy gap); at T = 0 a unit takes the sign of h (asynchronous
    deterministic updates). The chain's stationary distribution is p(s) ∝ exp(−E(s)/T)
    (Geman & Geman 1984). ``langevin``: s ← s + ε·f(s) + √(2εT)·ξ, ξ ~ N(0, I), with f the
    model's vector field; for an energy model f = −∂F/∂s, and the chain samples
    p(s) ∝ exp(−F(s)/T) up to an O(ε) bias (unadjusted Langevin; Roberts & Tweedie 1996).

    Args:
        init: the chain's start; ``None``: the model's rest state (``init_state``).
        sweeps: Gibbs sweeps or Langevin steps, >= 1.
        temperature: T >= 0 (Gibbs) or > 0 (Langevin).
        step_size: Langevin's ε.
        record: keep the state after every sweep in ``Sample.trajectory``.

    Raises:
        ValueError: an unknown method, sweeps < 1, a negative temperature, or a stochastic
            chain without ``condition.generator`` (it draws from nothing else).
        TypeError: the model cannot run this sampler (no binary units, no dynamics).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(SAMPLERS)}")
    if sweeps < 1 or temperature < 0 or (method == "langevin" and (temperature == 0 or step_size <= 0)):
        raise ValueError(f"need sweeps >= 1, temperature >= 0 (> 0 and step_size > 0 for Langevin); got "
                         f"sweeps={sweeps}, temperature={temperature}, step_size={step_size}")
    if condition.generator is None and temperature > 0:
        raise ValueError("a stochastic phase draws only from its condition's generator: pass "
                         "Condition(..., generator=torch.Generator().manual_seed(seed))")
    step = _stepper(model, condition, method, temperature, step_size)
    clamp = _clamps(model, condition)
    state = tuple(init) if init is not None else model.init_state(condition)
    state = tuple(clamp.get(l, s) for l, s in enumerate(state))
    trajectory = [] if record else None
    for _ in range(sweeps):
        state, previous = step(state, clamp), state
        if record:
            trajectory.append(state)
    return Sample(state, sweeps, _changed(method, previous, state, clamp), trajectory)


def _stepper(model, condition: Condition, method: str, temperature: float, step_size: float) -> Callable:
    """``step(state, clamp) -> state`` of one sweep of ``method``."""
    if method == "gibbs":
        _needs(model, GibbsBlocked, method)
        blocks, values = model.gibbs_blocks(condition), model.unit_values
        return lambda state, clamp: _gibbs_sweep(blocks, clamp, values, state, temperature, condition.generator)
    _needs(model, Dynamical, method)
    f = phase_field(model, condition)
    return lambda state, clamp: _langevin_step(f, clamp, state, step_size, temperature, condition.generator)


@dataclass(frozen=True)
class SampleOptions:
    """How a stochastic phase runs; ``options(model, condition, init)`` calls :func:`sample`."""

    method: str = "gibbs"
    sweeps: int = 1
    temperature: float = 1.0
    step_size: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.method!r}; valid: {', '.join(SAMPLERS)}")

    def __call__(self, model, condition: Condition, init: State | None = None, **kwargs) -> Sample:
        return sample(model, condition, init, method=self.method, sweeps=self.sweeps,
                      temperature=self.temperature, step_size=self.step_size, **kwargs)


@dataclass(frozen=True)
class Sleep:
    """A sleep phase: where the dream starts and how it runs.

    Args:
        start: ``noise`` (binary units on with probability 1/2, or continuous units ~ N(0, 1),
            from the generator); ``prior`` (the model's ``prior_state(condition)``: e.g. a
            Helmholtz machine's top layer drawn from its prior); ``persistent`` (the chain the
            caller kept from the previous dream; noise the first time: Tieleman 2008); ``data``
            (a state reached from data, passed by the caller).
        run: :class:`SampleOptions` (stochastic) or :class:`~dynets.SettleOptions` (deterministic:
            the dream settles to an attractor).
    """

    start: str = "noise"
    run: SampleOptions | SettleOptions = SampleOptions()

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"unknown sleep start {self.start!r}; valid: {', '.join(STARTS)}")

    def dream(self, model, condition: Condition, *, chain: State | None = None,
              data: State | None = None) -> Sample | Equilibrium:
        """Run the dream of ``condition`` (no input: ``Condition(batch_size=n, generator=g)``)."""
        if condition.x is not None:
            raise ValueError("a sleep phase has no input: pass Condition(batch_size=n, generator=g), not x")
        if isinstance(model, ChecksCondition):   # before the start state is built: a model that cannot run free says so
            model.check_condition(condition)
        return self.run(model, condition, self.initial(model, condition, chain, data))

    def initial(self, model, condition: Condition, chain: State | None, data: State | None) -> State:
        """The dream's first state, per ``start``."""
        if self.start == "data":
            if data is None:
                raise ValueError("Sleep(start='data') needs the state reached from data (data=...)")
            return tuple(data)
        if self.start == "persistent" and chain is not None:
            return tuple(chain)
        if self.start == "prior":
            _needs_prior(model)
            return model.prior_state(condition)
        return noise_state(model, condition)


def _needs_prior(model) -> None:
    if not isinstance(model, Dreams):
        raise TypeError(f"{type(model).__name__} has no top-level prior ({describe(Dreams)}): use start='noise'")


def noise_state(model, condition: Condition) -> State:
    """A random state of ``model``'s shapes from ``condition.generator``: binary units (capability
    :class:`~dynets.capabilities.GibbsBlocked`, valued ``unit_values``) each on with probability 1/2, continuous units ~ N(0, 1)."""
    if condition.generator is None:
        raise ValueError("a noise start draws from the condition's generator: pass Condition(..., generator=g)")
    rest = model.init_state(condition)
    if isinstance(model, GibbsBlocked):
        off, on = model.unit_values
        return tuple(torch.where(_draw(torch.rand, s, condition.generator) < 0.5, on, off).to(s.dtype) for s in rest)
    return tuple(_draw(torch.randn, s, condition.generator) for s in rest)

"""What a model (or a rule) can do, declared: one runtime-checkable ``Protocol`` per capability.

The engine and the rules ask ``isinstance(model, Capability)``, never for a class: a new model
gets a rule, a settle method or an evaluation by defining the methods below, and a rule names
the capabilities it needs in ``Rule.needs`` (:meth:`dynets.rules.base.Rule.check_model` refuses a
model that lacks one, naming it). Every member of a capability is a method or a class
attribute, so :func:`~dynets.capability_check.provides` answers for a class as ``isinstance``
does for its instances (that module also words what is missing).
The table of capabilities, with the code that uses each: ``docs/extending.md``.

A protocol check costs ~10 µs: the engine checks once per settle or per rule call, never per step.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch

from .capability_check import describe, members, missing, provides, summary  # noqa: F401 - their home before
from .phases import Block, Condition, State, VectorField


@runtime_checkable
class Dynamical(Protocol):
    """A dynamical system ds/dt = f(s; condition) that ``settle`` can run.

    ``dynamics(condition)`` returns the vector field ``f(t, state) -> ds/dt`` of a phase;
    ``init_state(condition)`` the rest state a settle starts from (one ``(batch, *shape)``
    tensor per layer). Used by :func:`dynets.settle` and every rule.
    """

    def dynamics(self, condition: Condition) -> VectorField: ...
    def init_state(self, condition: Condition) -> State: ...


@runtime_checkable
class ChecksCondition(Protocol):
    """A check of the conditions it can honour.

    ``check_condition(condition)`` raises a clear error for a condition the model cannot honour
    (no input for a model that needs one, a clamp of the wrong shape). ``settle``, the
    steppers and :class:`dynets.sampling.Sleep` call it before a phase starts.
    """

    def check_condition(self, condition: Condition) -> None: ...


@runtime_checkable
class Blocked(Protocol):
    """Gauss–Seidel blocks of a model in leaky form ds/dt = g(s) − s.

    ``blocks(condition)`` returns a partition of the state's layers, each block
    ``(layers, g)`` or ``(layers, g, steps)`` with ``g(state) -> [g_l for l in layers]`` (and a
    step per layer). Used by ``settle(method="gauss_seidel")`` (:class:`dynets.steppers.GaussSeidel`).
    """

    def blocks(self, condition: Condition) -> list[Block]: ...


@runtime_checkable
class Compartments(Protocol):
    """Compartments with time constants: each state layer a named compartment relaxing as
    ds_l/dt = (g_l − s_l)/τ_l.

    ``compartments()`` returns a name per state index (``"soma.1"``, ``"interneuron.1"``, ...);
    ``time_constants(condition)`` τ_l per state index (> 0); ``potentials(state, condition)``
    ``{name: (batch, units)}`` every compartment's potential, the instantaneous ones (dendrites)
    included. Used by ``settle(method="gauss_seidel")``, which steps a layer by Δt/τ_l and checks
    (g_l − s_l)/τ_l (:func:`dynets.steppers.phase_blocks`), and by trace plots.
    """

    def compartments(self) -> tuple[str, ...]: ...
    def time_constants(self, condition: Condition) -> tuple[float, ...]: ...
    def potentials(self, state: State, condition: Condition) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Plastic(Protocol):
    """Plasticity that can run during the settle, on weights passed in functionally.

    ``functional_field(condition, weights)`` returns the vector field with ``weights``
    (``{name: tensor}``, the parameters' names) in place of the parameters; ``plasticity(state,
    condition, weights)`` ``{name: dW/dt}`` (batch mean, before any learning rate) at a state.
    Used by :func:`dynets.plasticity.settle_plastic` and the Urbanczik–Senn rules
    (:mod:`dynets.rules.dendritic`).
    """

    def functional_field(self, condition: Condition, weights: dict[str, torch.Tensor]) -> VectorField: ...
    def plasticity(self, state: State, condition: Condition,
                   weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Lateral(Protocol):
    """Lateral interneurons that learn to cancel the top-down input at apical dendrites.

    ``apical(state, condition)`` returns each hidden layer's apical potential v_A ``(batch, n_k)``;
    ``lateral_names()`` the names of the lateral weights (pyramidal → interneuron and back).
    Used by :class:`~dynets.rules.DendriticSleep`.
    """

    def apical(self, state: State, condition: Condition) -> list[torch.Tensor]: ...
    def lateral_names(self) -> tuple[str, ...]: ...


@runtime_checkable
class Bursting(Protocol):
    """Units with an event rate and a burst probability whose change carries the error.

    ``burst_probabilities(state)`` returns each layer's p_l ``(batch, n_l)``;
    ``burst_plasticity(free, taught, condition)`` ``{name: ΔW}``, the burst-dependent change
    from the steady states without and with the teacher; ``burst_gains()`` each layer's factor
    g_l (the burst-rate change is −β g_l ∂L/∂a_l to first order); ``named_feedback()`` the
    ``(name, weight)`` of its own feedback weights. Used by :class:`~dynets.rules.Burstprop`.
    """

    def burst_probabilities(self, state: State) -> list[torch.Tensor]: ...
    def burst_plasticity(self, free: State, taught: State, condition: Condition) -> dict[str, torch.Tensor]: ...
    def burst_gains(self) -> list[float]: ...
    def named_feedback(self) -> list[tuple[str, torch.nn.Parameter]]: ...


@runtime_checkable
class Curvature(Protocol):
    """The curvature of the energy F whose gradient flow ds/dt = −∂F/∂s the model runs.

    ``curvature(condition)`` returns ``c(state, direction) -> (batch,)``: dᵀHd per sample, H a
    positive-definite approximation of ∂²F/∂s² at ``state`` (Gauss–Newton: F's squared errors
    linearised); ``preconditioner(condition, state)`` returns ``apply(r) -> State``: P⁻¹r for a
    positive-definite P ≈ H, fixed for a settle, acting on each layer alone (a clamped layer's
    zero stays zero). Used by ``settle(method="conjugate_gradient")``
    (:class:`dynets.conjugate.ConjugateGradient`).
    """

    def curvature(self, condition: Condition) -> Callable[[State, State], torch.Tensor]: ...
    def preconditioner(self, condition: Condition, state: State) -> Callable[[State], State]: ...


@runtime_checkable
class GibbsBlocked(Protocol):
    """Stochastic binary units that can be Gibbs-sampled.

    ``gibbs_blocks(condition)`` returns blocks ``(layers, field)`` whose ``field(state)`` gives
    each layer's input h (a unit is on with probability σ(h/T)); ``unit_values`` (class attribute)
    is the pair (off, on). Used by :func:`dynets.sampling.sample` (``method="gibbs"``), noise
    starts, :class:`~dynets.rules.BoltzmannLearning`, :class:`~dynets.rules.WakeSleep`.
    """

    unit_values: tuple[float, float]

    def gibbs_blocks(self, condition: Condition) -> list[tuple[tuple[int, ...], Callable]]: ...


@runtime_checkable
class Energy(Protocol):
    """An energy E(s; x) whose stationary points are the equilibria.

    ``energy(state, condition)`` returns E per sample ``(batch,)``;
    ``param_grad_difference(a, b, condition, scale)`` returns ``{name: scale·[∂F/∂θ(a) − ∂F/∂θ(b)]}``
    for two states (:class:`dynets.models.EnergyModel` gives both, by autograd). Used by
    :class:`~dynets.rules.EquilibriumPropagation` and :class:`~dynets.rules.ContrastiveHebbian`.
    """

    def energy(self, state: State, condition: Condition) -> torch.Tensor: ...
    def param_grad_difference(self, a: State, b: State, condition: Condition,
                              scale: float = 1.0) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class PredictionErrors(Protocol):
    """Prediction errors ε_l with a local Hebbian gradient.

    ``errors(state, condition)`` returns the errors ε_l, bottom first; ``param_grads(state,
    condition)`` ``{name: ∂E/∂θ}`` at a state in closed form; ``reconstruction(state, condition)``
    ``(batch,)`` the error of the data's prediction (generative arrangement). The rule also reads
    the attributes ``arrangement`` and ``is_generative``. Used by
    :class:`~dynets.rules.PredictiveCodingRule`.
    """

    def errors(self, state: State, condition: Condition) -> list[torch.Tensor]: ...
    def param_grads(self, state: State, condition: Condition) -> dict[str, torch.Tensor]: ...
    def reconstruction(self, state: State, condition: Condition) -> torch.Tensor: ...


@runtime_checkable
class FeedForward(Protocol):
    """A free equilibrium that is a feedforward pass.

    ``feedforward(condition)`` returns the free equilibrium computed layer by layer, carrying
    autograd's graph. Used by :class:`~dynets.rules.Backprop`.
    """

    def feedforward(self, condition: Condition) -> State: ...


@runtime_checkable
class SeparateFeedback(Protocol):
    """Feedback weights B of its own, not the transpose of the forward W.

    ``feedback_weights()`` returns [B_1, ...]; ``feedback_angles()`` the angle of each B_l
    to W_lᵀ in degrees; ``set_feedback(weights)`` sets B; ``own_feedback`` (a property) says
    whether B is weights of its own rather than Wᵀ (a tied model has this capability with B = Wᵀ),
    ``learns_feedback`` (a property) whether B is a trained parameter; ``hebbian_difference(a, b, x, scale)`` and
    ``delta_rule(a, b, pre, x, scale)`` give ``{name: gradient}`` from two phases;
    ``mirror_update(grads)`` carries the forward weights' updates onto the feedback that
    stands for them and ``mirror_sleep(sigma, samples, generator)`` estimates, from noise,
    what each B stands for (Wᵀ, or W for a convolution's feedback). Used by
    :class:`~dynets.rules.VectorFieldEP`, :class:`~dynets.rules.FeedbackAlignment`,
    :class:`~dynets.rules.KolenPollack`, :class:`~dynets.rules.WeightMirror`,
    :class:`~dynets.rules.DifferenceTargetPropagation` and the comparison study.
    """

    @property
    def learns_feedback(self) -> bool: ...
    @property
    def own_feedback(self) -> bool: ...
    def feedback_weights(self) -> list[torch.Tensor]: ...
    def feedback_angles(self) -> list[float]: ...
    def set_feedback(self, weights: list[torch.Tensor]) -> None: ...
    def hebbian_difference(self, a: State, b: State, x: torch.Tensor,
                           scale: float = 1.0) -> dict[str, torch.Tensor]: ...
    def delta_rule(self, a: State, b: State, pre: State, x: torch.Tensor,
                   scale: float = 1.0) -> dict[str, torch.Tensor]: ...
    def mirror_update(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def mirror_sleep(self, sigma: float, samples: int, generator: torch.Generator) -> list[torch.Tensor]: ...


@runtime_checkable
class Dreams(Protocol):
    """A prior over its top layer to dream from.

    ``prior_state(condition)`` returns a state drawn top-down from the prior (no input; the
    condition's generator draws). Used by :class:`dynets.sampling.Sleep` (``start="prior"``),
    :class:`~dynets.rules.WakeSleep`, :class:`~dynets.rules.SleepInterleaved` and the dream plots.
    """

    def prior_state(self, condition: Condition) -> State: ...


@runtime_checkable
class MeanPrior(Protocol):
    """A learned mean over its top layer to dream around, where it has one.

    ``prior_mean()`` returns the mean μ_L ``(top,)`` of the top layer's Gaussian prior, or
    ``None`` for an instance without one (predictive coding in its discriminative arrangement).
    Used by :class:`~dynets.rules.SleepInterleaved` (``start="prior"``) and the dreams of the
    self-supervised study.
    """

    def prior_mean(self) -> torch.Tensor | None: ...


@runtime_checkable
class Recognition(Protocol):
    """A recognition pathway q(h | x) to propose the causes of the data.

    ``proposal(x, k, generator)`` returns k samples of the hidden layers and their log q
    ``(k, batch)``; ``log_joint(x, hidden)`` log p(x, h) ``(k, batch)``. The wake-sleep delta
    rules write the parameters ``generative.*``, ``recognition.*`` and ``prior``. Used by
    :class:`~dynets.rules.WakeSleep`, :class:`~dynets.rules.SleepInterleaved` and
    :func:`dynets.likelihood.importance_log_prob`.
    """

    def proposal(self, x: torch.Tensor, k: int, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]: ...
    def log_joint(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class Likelihood(Protocol):
    """An exact likelihood of the data.

    ``log_prob(x)`` returns log p(x) ``(batch,)`` in nats. Used by the likelihood evaluation
    (:mod:`dynets.likelihood`).
    """

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Bipartite(Protocol):
    """Visible and hidden layers coupled by one matrix, each conditionally independent given the other.

    ``hidden_field(v)`` returns the hidden units' input given the visible ``v``,
    ``visible_field(h)`` the visible units' given ``h``. Used by
    :class:`~dynets.rules.BoltzmannLearning` (exact hidden statistics).
    """

    def hidden_field(self, v: torch.Tensor) -> torch.Tensor: ...
    def visible_field(self, h: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PatternStore(Protocol):
    """A pairwise coupling that stores ±1 patterns.

    ``coupling()`` returns the symmetric ``(N, N)`` matrix W (the parameter ``weight``, of
    ``N = n`` units); ``split(s)`` a flat ``(batch, N)`` state as the model's state. Used by
    :class:`~dynets.rules.HebbianStorage`, :class:`~dynets.rules.HebbianSleep`.
    """

    def coupling(self) -> torch.Tensor: ...
    def split(self, s: torch.Tensor) -> State: ...


@runtime_checkable
class Decoder(Protocol):
    """A code layer and a decoder from it back to the input.

    ``code_layer`` (class attribute) is the state index of the code; ``decode(code)`` the input
    ``(batch, in)`` a code explains. Used by :class:`~dynets.rules.SleepInterleaved` (dreams),
    the probes of :mod:`dynets.evaluate` and the self-supervised study.
    """

    code_layer: int

    def decode(self, code: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Reconstructs(Protocol):
    """A reconstruction of its input at an equilibrium.

    ``reconstruct(state, condition)`` returns x̂ ``(batch, *input shape)`` at a settled state
    with the input ``condition.x`` clamped. Used by :func:`dynets.evaluate.settled`, the
    reconstruction evaluation and the self-supervised study.
    """

    def reconstruct(self, state: State, condition: Condition) -> torch.Tensor: ...


@runtime_checkable
class Saturating(Protocol):
    """Units whose activation saturates at a lower and an upper bound.

    ``unit_bounds()`` returns (ρ(−∞), ρ(+∞)): where a unit sits that no small change of its
    input moves (0 and 1 for the hard sigmoid). Used by :func:`dynets.app.health.pinned_fraction`
    (``val_pinned`` and the dead-network warning of :func:`dynets.app.fit.fit`).
    """

    def unit_bounds(self) -> tuple[float, float]: ...


@runtime_checkable
class FreeRunning(Protocol):
    """A network that runs for a fixed trial instead of settling: a task's time series in, a
    trajectory out (:func:`dynets.trajectory.run`).

    ``trial_step()`` is Δt, the step of the input series and of the integration;
    ``trial_start(batch, generator)`` the state a trial starts from; ``perturbable()`` a ``(units,)``
    mask, 1 where perturbations ``noise[0]`` ``(batch, steps, units)`` reach the drive;
    ``rates(state)`` the rates r ``(..., units)`` of potentials ``(..., units)``. Its recurrent
    weights are the parameter ``weight`` ``(networks, units, units)`` (post × pre): one matrix
    shared by every row of a batch, or one per row. Used by
    :class:`~dynets.rules.EligibilityTrace`.
    """

    def trial_step(self) -> float: ...
    def trial_start(self, batch: int, generator: torch.Generator) -> State: ...
    def perturbable(self) -> torch.Tensor: ...
    def rates(self, state: State) -> torch.Tensor: ...


@runtime_checkable
class Stateful(Protocol):
    """State carried between steps (a rule's chains, stop rule, sleep credit).

    ``state_dict()`` and ``load_state_dict(state)``: saved in every checkpoint and restored on
    resume, so a resumed run continues bit-identically. Used by :mod:`dynets.app.fit` and
    :class:`~dynets.rules.SleepInterleaved` (its wake rule's).
    """

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Sweeps(Protocol):
    """Gauss–Seidel sweeps of the model's own, the optimised twin of its :class:`Blocked` blocks.

    ``sweeps(condition)`` returns a stepper of :mod:`dynets.steppers`' protocol (``start``,
    ``step``, ``residual``) whose states are those of the plain sweep over ``blocks(condition)``,
    bit for bit, at less cost. Used by ``settle(method="gauss_seidel")`` when nothing is compiled
    (:func:`dynets.steppers.gauss_seidel`); :mod:`dynets.models.fused` has the layered models'.
    """

    def sweeps(self, condition: Condition) -> Any: ...


def code_layer(model: object) -> int:
    """The state index of ``model``'s code: its ``code_layer`` (:class:`Decoder`), else the top (−1).

    Args:
        model: any model.
    """
    return model.code_layer if isinstance(model, Decoder) else -1

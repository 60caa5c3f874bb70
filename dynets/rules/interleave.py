"""Sleep interleaved with wake learning: dreams from the top-level prior, or replay of settled
states, at a configurable ratio of sleep steps to wake steps."""
from __future__ import annotations

from typing import Any

import torch

from ..capabilities import Decoder, Dreams, GibbsBlocked, MeanPrior, Recognition, Stateful, code_layer, missing
from ..models.helmholtz import Helmholtz
from ..sampling import sample
from ..settle import SettleOptions
from ..phases import Condition
from .base import Rule, Update, generators
from .recognition import RecognitionDelta
from .wake_sleep import WakeSleep

STARTS = ("prior", "replay")


def top_down(model, code: torch.Tensor, settle: SettleOptions) -> torch.Tensor:
    """``(n, in)`` the input a code explains: the model's ``decode`` when it has one, else the
    visible layer of a free settle (no input) with the code layer clamped, the generative pass
    of a model that runs free (generative predictive coding: every error zero below the code)."""
    return dream_input(model, code, settle)[0]


def dream_input(model, code: torch.Tensor, settle: SettleOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_down`'s input ``(n, in)`` and which dreams are usable ``(n,)``: finite, and
    (free settle) converged; a free run that diverged or did not settle is no dream to learn from."""
    if isinstance(model, Decoder):
        dream = model.decode(code)
        return dream, torch.isfinite(dream.flatten(1)).all(1)
    eq = settle(model, Condition(batch_size=len(code), clamp={code_layer(model): code}))
    return eq.state[0], (eq.residual <= eq.tolerance) & torch.isfinite(eq.state[0].flatten(1)).all(1)


def check_learner(learner, phase: str) -> None:
    """Raise unless ``learner`` defines a cost in ``phase`` (a method of that name, not listed in its
    ``undefined``), saying which phase and why."""
    if learner is None:
        return
    why = getattr(learner, "undefined", {}).get(phase)
    if why is None and not callable(getattr(learner, phase, None)):
        why = ("it scores a labelled batch: " +
               ("a dream has a cause, not a label" if phase == "sleep" else "here data come without labels"))
    if why is not None:
        raise TypeError(f"{type(learner).__name__} has no cost in the {phase} phase ({why}); "
                        f"as the {phase} learner use one of dynets.rules.recognition (e.g. "
                        f"rule/sleep_learner{'' if phase == 'sleep' else '@rule.wake_learner'}=node_perturbation)")


def prior_code(model, n: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """``(n, top)`` codes drawn around the top-level prior (capability
    :class:`~dynets.capabilities.MeanPrior`): μ_L + noise·ξ, ξ ~ N(0, I)."""
    mean = model.prior_mean() if isinstance(model, MeanPrior) else None
    if mean is None:
        raise TypeError(f"{type(model).__name__} has no top-level prior to dream from (capability MeanPrior: "
                        "a method prior_mean()): use start='replay'")
    xi = torch.randn(n, mean.shape[0], generator=generator, dtype=mean.dtype)
    return mean.detach() + noise * xi.to(mean.device)


def _independent_noise(sleep_learner, wake_learner) -> None:
    """Reseed the wake learner's generator to its seed + 1 when it starts as the sleep learner's
    (both built from one config file, seeded by ``${seed}``): shared probes would correlate the
    wake and the sleep estimates."""
    streams = [getattr(learner, "generator", None) for learner in (sleep_learner, wake_learner)]
    if None not in streams and streams[0].initial_seed() == streams[1].initial_seed():
        streams[1].manual_seed(streams[1].initial_seed() + 1)


class SleepInterleaved(Rule):
    r"""A wake rule with sleep phases interleaved: after each wake step, ``ratio`` sleep steps on
    average (a fractional ratio carries over: 0.5 sleeps after every second wake step); the
    sleep updates are added to the wake update of the same optimizer step. ``ratio = 0`` is
    the wake rule alone, bit for bit (no sleep step runs and no random number is drawn).

    A dream starts from a code at the top: ``prior`` (prior + noise·ξ; a Helmholtz machine's
    top layer drawn from its prior) or ``replay`` (the settled code of the wake batch, + noise·ξ;
    a Helmholtz machine's recognition sample of it), and runs down the generative pathway.
    What sleep learns:

    - Helmholtz machine (Hinton, Dayan, Frey & Neal 1995): the recognition delta rule recovers
      the dream's causes from the dream, ΔR_l ∝ (h_{l+1} − σ(R_l h_l + r_l)) h_lᵀ. The wake step
      is then :meth:`WakeSleep.wake` only (it trains G and the prior), so at ratio 0 the
      recognition weights learn only from a ``wake_learner``.
      ``sleep_learner`` replaces the delta rule by any learner of R on the dream with its cause
      as the target (:mod:`dynets.rules.recognition`: node or weight perturbation, the exact
      gradient); ``wake_learner`` trains R on the wake batch too, self-supervised (the data's
      reconstruction −Σ_l log p(m_l | m_{l+1}) at the recognised code m), so perturbation runs
      in wake, in sleep or in both.
    - any other model: generative replay, the wake rule applied to the dreamt inputs
      (Robins 1995's pseudo-rehearsal, with the network's own generative pass as the source).
      A dream whose free settle diverged or did not converge is left out and counted
      (``sleep_unusable``); a sleep step with none usable trains nothing.

    Args:
        wake: the wake rule (its ``settle`` settles every phase).
        ratio: sleep steps per wake step, >= 0.
        start: ``prior`` or ``replay``.
        noise: standard deviation of the noise added to a continuous code.
        dreams: dreams per sleep step (default: the batch size).
        seed: seed of the rule's ``generator`` (dream codes).
        sleep_learner: what learns R from a Helmholtz machine's dream (an object with
            ``sleep(model, dream) -> (grads, metrics)``; ``None``: the delta rule, as
            :class:`~dynets.rules.recognition.RecognitionDelta`).
        wake_learner: what learns R from the wake batch (``wake(model, x) -> (grads, metrics)``),
            or ``None``; if its generator has the sleep learner's seed, it is reseeded to seed + 1.
    """

    def __init__(self, wake: Rule, ratio: float = 1.0, start: str = "prior", noise: float = 1.0,
                 dreams: int | None = None, seed: int = 0, sleep_learner=None, wake_learner=None) -> None:
        super().__init__(wake.settle, wake.cost, wake.allow_unconverged)
        if start not in STARTS:
            raise ValueError(f"unknown sleep start {start!r}; valid: {', '.join(STARTS)}")
        if ratio < 0 or noise < 0 or (dreams is not None and dreams < 1):
            raise ValueError(f"need ratio >= 0, noise >= 0 and dreams >= 1; got {ratio}, {noise}, {dreams}")
        self.wake, self.ratio, self.start, self.noise, self.dreams = wake, float(ratio), start, float(noise), dreams
        check_learner(sleep_learner, "sleep")
        check_learner(wake_learner, "wake")
        self.sleep_learner, self.wake_learner, self.credit = sleep_learner, wake_learner, 0.0
        self.generator = torch.Generator().manual_seed(seed)
        _independent_noise(sleep_learner, wake_learner)
        for prefix, owner in (("wake", wake), ("sleep_learner", sleep_learner), ("wake_learner", wake_learner)):
            for name, g in (generators(owner) if owner is not None else {}).items():   # checkpointed with ours
                setattr(self, f"{prefix}_{name}", g)

    @property
    def needs_target(self) -> bool:
        """The wake rule's: sleep phases read no label."""
        return self.wake.needs_target

    def check_model(self, model) -> None:
        """The wake rule's check; a sleep or wake learner of R needs a model that dreams and recognises."""
        self.wake.check_model(model)
        if self.sleep_learner is not None or self.wake_learner is not None:
            why = missing(model, (Recognition, Dreams, GibbsBlocked), "a sleep or wake learner of the recognition network")
            if why:
                raise TypeError(why + " (it learns a Helmholtz machine's recognition network: model=helmholtz)")

    def update(self, model, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        grads, metrics = self._wake(model, x, y)
        if self.wake_learner is not None:
            self.check_model(model)
            extra, more = self.wake_learner.wake(model, x)
            _add(grads, extra)
            metrics.update(more)
        self.credit += self.ratio
        sleeps, self.credit = int(self.credit), self.credit - int(self.credit)
        for _ in range(sleeps):
            extra, more = self._sleep(model, x, y)
            _add(grads, extra)
            for name, value in more.items():   # counts add up over the sleep steps, the rest is the last one's
                metrics[name] = metrics.get(name, 0) + value if name.endswith(("_probes", "_unusable")) else value
        metrics["sleeps"] = sleeps
        return Update(grads, metrics)

    def _wake(self, model, x: torch.Tensor, y: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if isinstance(self.wake, WakeSleep):
            self.wake.check_model(model)
            model.check_input(x)
            with torch.no_grad():
                return self.wake.wake(model, x)
        wake = self.wake.update(model, x, y)
        return dict(wake.grads), dict(wake.metrics)

    def _sleep(self, model, x: torch.Tensor, y: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        n = self.dreams or len(x)
        if isinstance(model, Recognition) and isinstance(model, Dreams):
            return self._helmholtz_sleep(model, x, n)
        if self.sleep_learner is not None:
            self.check_model(model)
        if self.start == "prior":
            code = prior_code(model, n, self.noise, self.generator)
        else:
            state = self.settle(model, model.prepare(Condition(x))).state
            code = state[code_layer(model)][:n]
            code = code + self.noise * torch.randn(code.shape, generator=self.generator, dtype=code.dtype).to(code.device)
        dream, usable = dream_input(model, code, self.settle)
        metrics = {"sleep_unusable": int((~usable).sum())}
        if not usable.any():
            return {}, metrics
        labels = None if y is None else y[:len(dream)]
        if not usable.all():
            dream, labels = dream[usable], None if labels is None else labels[usable]
        return dict(self.wake.update(model, dream, labels).grads), metrics

    @torch.no_grad()
    def _helmholtz_sleep(self, model: Helmholtz, x: torch.Tensor, n: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """R's learner (default the delta rule) on one top-down sweep from a prior or replayed top layer."""
        condition = Condition(batch_size=n, generator=self.generator)
        if self.start == "replay":
            top = model.proposal(x[:n], 1, self.generator)[0][-1][0]
            condition = Condition(batch_size=len(top), generator=self.generator, clamp={-1: top})
        dream = sample(model, condition, model.prior_state(condition), method="gibbs", sweeps=1).state
        if self.sleep_learner is not None:
            return self.sleep_learner.sleep(model, dream)
        return RecognitionDelta().grads(model, "sleep", dream)

    def state_dict(self) -> dict[str, Any]:
        """The sleep credit carried over (the generators are checkpointed as attributes)."""
        return {"credit": self.credit, "wake": self.wake.state_dict() if isinstance(self.wake, Stateful) else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.credit = state["credit"]
        if state["wake"] is not None:
            self.wake.load_state_dict(state["wake"])


def _add(grads: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> None:
    """Add ``extra`` into ``grads`` by name (in place)."""
    for name, g in extra.items():
        grads[name] = grads[name] + g if name in grads else g

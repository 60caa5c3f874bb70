"""Sleep interleaved with wake learning: dreams from the top-level prior, or replay of settled
states, at a configurable ratio of sleep steps to wake steps."""
from __future__ import annotations

from typing import Any

import torch

from ..capabilities import Decoder, Dreams, MeanPrior, Recognition, Stateful, code_layer
from ..models.helmholtz import Helmholtz
from ..sampling import sample
from ..settle import SettleOptions
from ..phases import Condition
from .base import Rule, Update, generators
from .wake_sleep import WakeSleep

STARTS = ("prior", "replay")


def top_down(model, code: torch.Tensor, settle: SettleOptions) -> torch.Tensor:
    """``(n, in)`` the input a code explains: the model's ``decode`` when it has one, else the
    visible layer of a free settle (no input) with the code layer clamped, the generative pass
    of a model that runs free (generative predictive coding: every error zero below the code)."""
    if isinstance(model, Decoder):
        return model.decode(code)
    return settle(model, Condition(batch_size=len(code), clamp={code_layer(model): code})).state[0]


def prior_code(model, n: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """``(n, top)`` codes drawn around the top-level prior (capability
    :class:`~dynets.capabilities.MeanPrior`): μ_L + noise·ξ, ξ ~ N(0, I)."""
    mean = model.prior_mean() if isinstance(model, MeanPrior) else None
    if mean is None:
        raise TypeError(f"{type(model).__name__} has no top-level prior to dream from (capability MeanPrior: "
                        "a method prior_mean()): use start='replay'")
    xi = torch.randn(n, mean.shape[0], generator=generator, dtype=mean.dtype)
    return mean.detach() + noise * xi.to(mean.device)


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
      recognition weights never learn.
    - any other model: generative replay, the wake rule applied to the dreamt inputs
      (Robins 1995's pseudo-rehearsal, with the network's own generative pass as the source).

    Args:
        wake: the wake rule (its ``settle`` settles every phase).
        ratio: sleep steps per wake step, >= 0.
        start: ``prior`` or ``replay``.
        noise: standard deviation of the noise added to a continuous code.
        dreams: dreams per sleep step (default: the batch size).
        seed: seed of the rule's ``generator`` (dream codes).
    """

    def __init__(self, wake: Rule, ratio: float = 1.0, start: str = "prior", noise: float = 1.0,
                 dreams: int | None = None, seed: int = 0) -> None:
        super().__init__(wake.settle, wake.cost, wake.allow_unconverged)
        if start not in STARTS:
            raise ValueError(f"unknown sleep start {start!r}; valid: {', '.join(STARTS)}")
        if ratio < 0 or noise < 0 or (dreams is not None and dreams < 1):
            raise ValueError(f"need ratio >= 0, noise >= 0 and dreams >= 1; got {ratio}, {noise}, {dreams}")
        self.wake, self.ratio, self.start, self.noise, self.dreams = wake, float(ratio), start, float(noise), dreams
        self.credit = 0.0
        self.generator = torch.Generator().manual_seed(seed)
        for name, g in generators(wake).items():   # the wake rule's streams, checkpointed with ours
            setattr(self, f"wake_{name}", g)

    @property
    def needs_target(self) -> bool:
        """The wake rule's: sleep phases read no label."""
        return self.wake.needs_target

    def check_model(self, model) -> None:
        self.wake.check_model(model)

    def update(self, model, x: torch.Tensor, y: torch.Tensor | None = None) -> Update:
        grads, metrics = self._wake(model, x, y)
        self.credit += self.ratio
        sleeps, self.credit = int(self.credit), self.credit - int(self.credit)
        for _ in range(sleeps):
            for name, g in self._sleep(model, x, y).items():
                grads[name] = grads[name] + g if name in grads else g
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

    def _sleep(self, model, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        n = self.dreams or len(x)
        if isinstance(model, Recognition) and isinstance(model, Dreams):
            return self._helmholtz_sleep(model, x, n)
        if self.start == "prior":
            code = prior_code(model, n, self.noise, self.generator)
        else:
            state = self.settle(model, model.prepare(Condition(x))).state
            code = state[code_layer(model)][:n]
            code = code + self.noise * torch.randn(code.shape, generator=self.generator, dtype=code.dtype).to(code.device)
        dream = top_down(model, code, self.settle)
        return self.wake.update(model, dream, None if y is None else y[:len(dream)]).grads

    @torch.no_grad()
    def _helmholtz_sleep(self, model: Helmholtz, x: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """The recognition delta rule on one top-down sweep from a prior or replayed top layer."""
        condition = Condition(batch_size=n, generator=self.generator)
        if self.start == "replay":
            top = model.proposal(x[:n], 1, self.generator)[0][-1][0]
            condition = Condition(batch_size=len(top), generator=self.generator, clamp={-1: top})
        dream = sample(model, condition, model.prior_state(condition), method="gibbs", sweeps=1).state
        layers = [h[None] for h in dream]
        return WakeSleep.recognition_grads(model, layers, layers[0].new_ones(1, len(dream[0])))

    def state_dict(self) -> dict[str, Any]:
        """The sleep credit carried over (the generators are checkpointed as attributes)."""
        return {"credit": self.credit, "wake": self.wake.state_dict() if isinstance(self.wake, Stateful) else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.credit = state["credit"]
        if state["wake"] is not None:
            self.wake.load_state_dict(state["wake"])

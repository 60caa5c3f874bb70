"""The bench's other families (``scripts/bench.py``): one training step of each rule on its
standard model against a backprop step of the same-size network. EP and PC, which have textbook
versions to beat too: :mod:`dynets.studies.bench_references`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..models import AssociativeMemory, Asymmetric, BoltzmannMachine, Helmholtz, LayeredHopfield
from ..rules import (BoltzmannLearning, ContrastiveHebbian, DifferenceTargetPropagation, FeedbackAlignment,
                     HebbianSleep, ImplicitDifferentiation, KolenPollack, NodePerturbation, VectorFieldEP, WakeSleep,
                     WeightMirror, WeightPerturbation, write_grads)
from ..rules.base import Rule
from ..rules.memory import hebbian
from ..settle import SettleOptions
from .counts import counts
from .timing import backprop, random_batch, timed, train_step, with_adam

SEED, PROBES = 0, 16
gs = lambda atol=1e-3: SettleOptions(method="gauss_seidel", step_size=1.0, atol=atol, max_time=400, check_every=5)


@dataclass(frozen=True)
class Family:
    """A rule on its standard model, as the bench times it (the settings of configs/compare.yaml,
    compare_bars.yaml and recall.yaml, Gauss–Seidel settles).

    Attributes:
        model: the model of the layer sizes ``sizes`` gives.
        rule: a new rule; given ``probes`` (perturbation), one with that many probes.
        data: what the rule learns from: ``labels`` (inputs in [0, 1) and class labels), ``binary``
            (inputs > 0.5), ``patterns`` (±1 patterns stored in the memory first, 0.1 per unit).
        sizes: the model's layer sizes from the bench's (the generative and memory models have their own).
        batch: the family's own batch size (the memory's dreams), else the bench's.
        sleep: time the weight mirror's sleep alone (the update of B), not the whole step.
        probes: the rule's probes, whose marginal cost is measured against a one-probe step.
        lr: the shared Adam step's learning rate (the memory's: ε per dream, as in recall.yaml).
    """

    model: Callable[[list[int]], nn.Module]
    rule: Callable[..., Rule]
    data: str = "labels"
    sizes: Callable[[list[int]], list[int]] = list
    batch: int | None = None
    sleep: bool = False
    probes: int | None = None
    lr: float = 1e-3


hopfield = lambda s: LayeredHopfield(s, "sigmoid")
asym = lambda feedback: lambda s: Asymmetric(s, feedback, "sigmoid")
FAMILIES = {
    "chl": Family(hopfield, lambda: ContrastiveHebbian(gs())),
    "implicit": Family(hopfield, lambda: ImplicitDifferentiation(gs())),
    "node_perturbation": Family(hopfield, lambda k=PROBES: NodePerturbation(0.05, k, settle=gs(1e-5)), probes=PROBES),
    "weight_perturbation": Family(hopfield, lambda k=PROBES: WeightPerturbation(0.05, k, settle=gs(1e-5)),
                                  probes=PROBES),
    "wake_sleep": Family(Helmholtz, lambda: WakeSleep("plain"), "binary"),
    "rws": Family(Helmholtz, lambda: WakeSleep("reweighted", k=5, q_update="both"), "binary"),
    "pcd": Family(lambda s: BoltzmannMachine(s, init_scale=1.0), lambda: BoltzmannLearning("pcd"), "binary",
                  sizes=lambda s: s[:2]),
    "hebbian_sleep": Family(lambda s: AssociativeMemory(s[0], gain=100.0),
                            lambda: HebbianSleep(100, patience=None, drop=0.999), "patterns",
                            sizes=lambda s: [200, 200], batch=100, lr=5e-5),
    "vfep": Family(asym("random"), lambda: VectorFieldEP(0.5, settle=gs())),
    "fa": Family(asym("random"), lambda: FeedbackAlignment(0.5, settle=gs())),
    "kp": Family(asym("learned"), lambda: KolenPollack(0.5, settle=gs())),
    "mirror": Family(asym("learned"), lambda: WeightMirror(0.5, settle=gs())),
    "mirror_sleep": Family(asym("learned"), lambda: WeightMirror(0.5, settle=gs()), sleep=True),
    "dtp": Family(asym("learned"), lambda: DifferenceTargetPropagation(0.5, reg=0.1, settle=gs())),
}


def label(name: str, sizes: list[int], batch: int) -> str:
    """The measurement's name, ``<family> <its sizes>/b<its batch>`` (a family with sizes and
    batch of its own has one name at every bench size).

    Args:
        name: a key of :data:`FAMILIES`.
        sizes: the bench's layer sizes.
        batch: the bench's batch size.
    """
    family = FAMILIES[name]
    return f"{name} {'-'.join(map(str, family.sizes(sizes)))}/b{family.batch or batch}"


def build(name: str, sizes: list[int], batch: int, device: torch.device,
          probes: int | None = None) -> tuple[nn.Module, Rule, torch.Tensor, torch.Tensor]:
    """The family's model, rule, inputs and labels, seeded (the same each call).

    Args:
        name: a key of :data:`FAMILIES`.
        sizes: the bench's layer sizes (the family's model takes :attr:`Family.sizes` of them).
        batch: the bench's batch size (unless the family has its own).
        device: where the model and the batch go.
        probes: the rule's probes (perturbation only), else its own.
    """
    family = FAMILIES[name]
    own = family.sizes(sizes)
    x, labels = random_batch(own[:1], own[-1], family.batch or batch, device, SEED, family.data == "binary")
    model, rule = family.model(own).to(device), family.rule() if probes is None else family.rule(probes)
    if family.data == "patterns":   # load 0.1: the recall study's regime where unlearning helps
        x = torch.where(x[: max(1, own[0] // 10)] > 0.5, 1.0, -1.0)
        model.weight.data.copy_(hebbian(x))
    return model, rule, x, labels


def grads_step(name: str, model: nn.Module, rule: Rule, x: torch.Tensor, labels: torch.Tensor) -> Callable:
    """What the family's timed step runs before the optimizer: the rule's update on ``(x, labels)``
    written to ``p.grad`` (the weight mirror's sleep: B's update alone).

    Args:
        name: a key of :data:`FAMILIES`.
        model: the family's model.
        rule: its rule.
        x: the inputs.
        labels: the labels.
    """
    if FAMILIES[name].sleep:
        return lambda: write_grads(model, rule.sleep_grads(model))
    return lambda: train_step(rule, model, x, labels)


def bench_family(name: str, sizes: list[int], batch: int, device: torch.device, repeats: int, warmup: int) -> dict:
    """One step of family ``name``'s rule on its standard net against backprop of the same-size
    sigmoid MLP; the JSON line (with probes: also a one-probe step and ``ms_per_probe``, the
    marginal cost of a probe), with each step's :func:`~dynets.studies.counts.counts` from one more
    step after the timed ones.

    Args:
        name: a key of :data:`FAMILIES`.
        sizes: the bench's layer sizes.
        batch: the bench's batch size.
        device: where it runs.
        repeats: timed steps of each method.
        warmup: untimed steps first.
    """
    family = FAMILIES[name]
    model, rule, x, labels = build(name, sizes, batch, device)
    steps = {name: with_adam(model.parameters(), grads_step(name, model, rule, x, labels), family.lr)}
    if family.probes:
        one, rule1, *_ = build(name, sizes, batch, device, probes=1)
        steps["one_probe"] = with_adam(one.parameters(), grads_step(name, one, rule1, x, labels), family.lr)
    own, rows = family.sizes(sizes), family.batch or batch
    xb, lb = random_batch(own[:1], own[-1], rows, device, SEED)
    steps["backprop"] = backprop(own, nn.Sigmoid(), xb, nn.functional.one_hot(lb, own[-1]).to(xb.dtype))
    result, ms = timed(label(name, sizes, batch), steps, device, repeats, warmup, name)
    result.update(counts(steps, name))
    if family.probes:
        result["ms_per_probe"] = (ms[name] - ms["one_probe"]) / (family.probes - 1)
    return result

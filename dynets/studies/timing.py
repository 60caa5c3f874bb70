"""Timing one training step of a rule against backprop: the pieces ``scripts/bench.py`` shares
between its benchmarks (steps that end in the same optimizer step, timed taking turns)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn

from ..rules import write_grads


def train_step(rule, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """The rule's update written to ``p.grad``, its metrics returned: the one call of the rule API.

    Args:
        rule: a :class:`~dynets.rules.Rule`.
        model: the model it trains.
        x: the input batch.
        labels: the class labels ``(batch,)``.
    """
    write_grads(model, (update := rule.update(model, x, labels)).grads)
    return update.metrics


def with_adam(params, grads: Callable[[], object], lr: float = 1e-3) -> Callable[[], tuple]:
    """A timed step: ``grads()`` writes ``p.grad``, then the fused Adam step every method shares.

    Args:
        params: the parameters the step updates.
        grads: writes their ``p.grad``.
        lr: Adam's learning rate.
    """
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    return lambda: (grads(), opt.step())


def backprop_step(net: nn.Module, x: torch.Tensor, onehot: torch.Tensor) -> Callable[[], tuple]:
    """A backprop step of the feedforward ``net`` on the squared error ½‖net(x) − onehot‖², batch mean.

    Args:
        net: the feedforward net (on ``x``'s device).
        x: the input batch.
        onehot: the targets ``(batch, classes)``.
    """
    loss = lambda: 0.5 * (net(x) - onehot).pow(2).sum(1).mean()
    return with_adam(net.parameters(), lambda: (net.zero_grad(set_to_none=True), loss().backward()))


def backprop(sizes: list[int], act: nn.Module, x: torch.Tensor, onehot: torch.Tensor) -> Callable[[], tuple]:
    """A backprop step (:func:`backprop_step`) of the feedforward net of layer ``sizes``: ``act``
    after every hidden layer, a linear read-out.

    Args:
        sizes: the layer sizes, input first.
        act: the hidden layers' activation.
        x: the input batch ``(batch, sizes[0])``.
        onehot: the targets ``(batch, sizes[-1])``.
    """
    mlp = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), act)][:-1]).to(x.device)
    return backprop_step(mlp, x, onehot)


def random_batch(shape: tuple, classes: int, batch: int, device: torch.device, seed: int,
                 binary: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs in [0, 1) (``binary``: x > 0.5) and class labels; torch's generator is then
    seeded with ``seed`` too, for the initial weights of the models built next.

    Args:
        shape: one sample's shape.
        classes: labels are drawn from ``range(classes)``.
        batch: rows.
        device: where they go.
        seed: the draw's seed.
        binary: inputs thresholded at 0.5.
    """
    gen = torch.Generator().manual_seed(seed)
    x, labels = torch.rand(batch, *shape, generator=gen), torch.randint(classes, (batch,), generator=gen)
    torch.manual_seed(seed)
    return (x > 0.5).float().to(device) if binary else x.to(device), labels.to(device)


def timed(config: str, steps: dict, device: torch.device, repeats: int, warmup: int,
          base: str = "dynets") -> tuple[dict, dict]:
    """Median ms per step of each callable (taking turns, so that load falls on all alike) and
    peak CUDA MB: printed as a table, returned as a JSON-ready dict (with ``ratio_vs_backprop``
    of ``base``) and the medians by name.

    Args:
        config: the label of the measurement.
        steps: name: a step callable; one must be ``backprop``.
        device: where they run (CUDA: synchronised around each step).
        repeats: timed steps of each.
        warmup: untimed steps of each first.
        base: the method the table's ratio column divides by (``method`` in the result).
    """
    cuda, peak, times = device.type == "cuda", {}, {name: [] for name in steps}
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    for name, step in steps.items():
        torch.cuda.reset_peak_memory_stats(device) if cuda else None
        for _ in range(warmup):
            step()
        peak.update({name: torch.cuda.max_memory_allocated(device) / 2**20} if cuda else {})
    for _ in range(repeats):
        for name, step in steps.items():
            sync(), (start := time.perf_counter()), step(), sync()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(f"\n{config} on {device} ({torch.get_num_threads()} threads), median of {repeats}\n"
          f"{'method':<28} {'ms/step':>9} {'x ' + base[:7]:>9} {'peak MB':>9}")
    for name, t in ms.items():
        print(f"{name:<28} {t:9.2f} {t / ms[base]:9.2f} {peak.get(name, float('nan')):9.1f}")
    return {"device": str(device), "threads": torch.get_num_threads(), "config": config, "method": base,
            **{f"ms_{name}": t for name, t in ms.items()}, **{f"peak_mb_{name}": mb for name, mb in peak.items()},
            "ratio_vs_backprop": ms[base] / ms["backprop"]}, ms

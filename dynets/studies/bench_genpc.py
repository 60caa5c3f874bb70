"""The bench's generative predictive coding (``scripts/bench.py --families genpc``, issue 22):
the self-supervised study's PC (``configs/probe.yaml``: 784-1024 tanh, batch 64, atol 1e-3) after
some training, one unsupervised training step settled by conjugate gradient against the same step
settled by the Euler flow the study used before, and each settle alone, on the same batch."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..models import PredictiveCoding
from ..phases import Condition
from ..rules import PredictiveCodingRule, write_grads
from ..settle import SettleOptions
from .timing import backprop_step, random_batch, timed, train_step, with_adam

SEED = 0
# probe.yaml's pc_settle before and after issue 22: the tolerance is the same.
EULER = SettleOptions(method="fast_euler", step_size=0.1, stability=0.9, atol=1e-3, max_time=50.0)
CG = SettleOptions(method="conjugate_gradient", step_size=1.0, atol=1e-3, max_time=200.0, check_every=2)


def trained(sizes: list[int], batch: int, device: torch.device, steps: int, data: torch.Tensor | None = None,
            lr: float = 1e-3) -> PredictiveCoding:
    """Generative PC of ``sizes`` after ``steps`` unsupervised Adam steps (settled by :data:`CG`)
    on seeded batches: rows of ``data``, else uniform [0, 1) inputs. Training is what makes its
    settle stiff (Fashion-MNIST at 1024 latents: λ_max(WᵀW) 2.5 at init, 66 after 50 batches).

    Args:
        sizes: ``[data, latents]`` (or more layers).
        batch: rows per step.
        device: where it trains.
        steps: Adam steps.
        data: ``(n, sizes[0])`` rows to draw batches from, or ``None``.
        lr: Adam's learning rate (the study's).
    """
    torch.manual_seed(SEED)
    model, rule = PredictiveCoding(sizes, arrangement="generative").to(device), PredictiveCodingRule(
        variant="unsupervised", settle=CG)
    optimizer, draws = torch.optim.Adam(model.parameters(), lr=lr), torch.Generator().manual_seed(SEED)
    for k in range(steps):
        x = (data[torch.randint(len(data), (batch,), generator=draws)].to(device) if data is not None
             else random_batch(sizes[:1], 1, batch, device, SEED + 1 + k)[0])
        write_grads(model, rule.update(model, x).grads)
        optimizer.step()
    return model


def bench_genpc(sizes: list[int], batch: int, device: torch.device, repeats: int, warmup: int,
                train_steps: int = 50, data: torch.Tensor | None = None) -> dict:
    """The JSON line: ``ms_dynets`` (a training step settled by :data:`CG`), ``ms_dynets_euler``
    (by :data:`EULER`), ``ms_settle_cg`` / ``ms_settle_euler`` (the settles alone), ``ms_backprop``
    (a backprop step of the sigmoid autoencoder of the same sizes), ``settle_speedup`` (Euler's
    settle ms over CG's), each settle's steps and residual, and the largest difference of their states.

    Args:
        sizes: ``[data, latents]``.
        batch: rows.
        device: where it runs.
        repeats: timed steps of each.
        warmup: untimed steps first.
        train_steps: Adam steps before timing (:func:`trained`).
        data: rows to train and time on (``None``: uniform inputs).
    """
    model = trained(sizes, batch, device, train_steps, data)
    x = data[:batch].to(device) if data is not None else random_batch(sizes[:1], 1, batch, device, SEED)[0]
    condition = model.prepare(Condition(x))
    ends = {name: options(model, condition) for name, options in (("cg", CG), ("euler", EULER))}
    steps = {}
    for name, options in (("dynets", CG), ("dynets_euler", EULER)):
        twin = copy.deepcopy(model)
        rule = PredictiveCodingRule(variant="unsupervised", settle=options)
        steps[name] = with_adam(twin.parameters(), lambda twin=twin, rule=rule: train_step(rule, twin, x, None))
    steps["settle_cg"], steps["settle_euler"] = lambda: CG(model, condition), lambda: EULER(model, condition)
    autoencoder = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Sigmoid(), nn.Linear(sizes[1], sizes[0]),
                                nn.Sigmoid()).to(device)
    steps["backprop"] = backprop_step(autoencoder, x, x)
    config = f"genpc {'-'.join(map(str, sizes))}/b{batch}"
    result, ms = timed(config, steps, device, repeats, warmup)
    return {**result, "train_steps": train_steps, "data": "rows given" if data is not None else "uniform",
            "settle_speedup": ms["settle_euler"] / ms["settle_cg"],
            "steps_same_residual": {name: eq.steps for name, eq in ends.items()},
            "residual": {name: eq.residual.max().item() for name, eq in ends.items()},
            "max_state_difference": (ends["cg"].state[-1] - ends["euler"].state[-1]).abs().max().item()}

"""The dendritic microcircuit's study: a hydra entry point over :mod:`dynets.studies.dendritic`.

    python scripts/dendritic.py [studies=[alignment,sleep]] [transposed=false] [sleep.lr=0.2] [cost.batch=64]

The last lines of output are one JSON object per study; the traces' figure goes to traces.figure.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from dynets.studies import dendritic as study

log = logging.getLogger("dynets")


def alignment(cfg: DictConfig, model, x, target, learned=None) -> dict:
    """Cosines per hidden layer in the analytic self-predicting state (and in ``learned``)."""
    tight = instantiate(cfg.tight)
    rows = {"analytic": study.apical_alignment(copy.deepcopy(model).self_predicting_(), x, target, cfg.beta, tight)}
    if learned is not None:
        rows["slept"] = study.apical_alignment(learned, x, target, cfg.beta, tight)
        rows["slept_change"] = study.apical_alignment(learned, x, target, cfg.beta, tight, change=True)
    return {"beta": cfg.beta, "transposed": cfg.transposed, **{f"cosine_{k}": v for k, v in rows.items()}}


def sleep(cfg: DictConfig, model, inputs, held_out, target):
    """Sleep from the model's random lateral weights; the curve (with the cosines) and the slept model."""
    slept, rule, tight = copy.deepcopy(model), instantiate(cfg.sleep.rule), instantiate(cfg.tight)
    optimizer = instantiate(cfg.sleep.optimizer)(slept.parameters())

    def measure() -> dict:
        out = {"distance": study.lateral_distance(slept, held_out)}
        for beta in cfg.sleep.betas:
            out[f"cosine_{beta}"] = study.apical_alignment(slept, held_out, target, beta, tight)
            out[f"cosine_change_{beta}"] = study.apical_alignment(slept, held_out, target, beta, tight, change=True)
        return out

    curve = study.sleep_curve(slept, rule, optimizer, inputs, held_out, cfg.sleep.steps, cfg.sleep.batch,
                              cfg.sleep.every, tight, cfg.seed, measure, log.info, decay(cfg.sleep.decay, optimizer))
    return {"stopped": rule.stopped, "curve": curve}, slept


def decay(cfg: DictConfig, optimizer):
    """The learning rate constant for ``after`` updates, then times ``gamma`` every ``every`` (None: constant)."""
    if cfg.after is None:
        return None
    after, every, gamma = int(cfg.after), int(cfg.every), float(cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: gamma ** ((s - after) // every + 1) if s >= after else 1.0)


def traces(cfg: DictConfig, model, x, target) -> dict:
    """The compartments of a self-predicting net through a free then a taught settle, drawn."""
    t = cfg.traces
    curves = study.traces(copy.deepcopy(model).self_predicting_(), x[:4], target[:4], t.beta, t.free_time,
                          t.taught_time, t.dt)
    path = study.plot_traces(curves, t.layer, Path(to_absolute_path(t.figure)), teacher_at=t.free_time)
    return {"figure": str(path)}


@hydra.main(version_base=None, config_path="../configs", config_name="dendritic")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data).flat()
    model = instantiate(cfg.model).double()
    model = study.transpose_down_(model) if cfg.transposed else model
    x, labels = data.val.x[:cfg.held_out].double(), data.val.y[:cfg.held_out]
    target, results, slept = model.target(labels), {}, None
    if "sleep" in cfg.studies:
        results["sleep"], slept = sleep(cfg, model, data.train.x.double(), x, target)
    if "alignment" in cfg.studies:
        results["alignment"] = alignment(cfg, model, x, target, slept)
    if "traces" in cfg.studies:
        results["traces"] = traces(cfg, model, x, target)
    if "cost" in cfg.studies:
        c = cfg.cost
        results["cost"] = study.settle_cost(list(c.sizes), c.batch, c.beta, c.activation, repeats=c.repeats, warmup=c.warmup)
    print()
    for name, result in results.items():   # the last lines: one JSON object per study
        print(json.dumps({"study": name, **result}))


if __name__ == "__main__":
    main()

"""The comparison table of every rule: a hydra entry point over :mod:`dynets.studies.compare`.

    python scripts/compare.py [data=fashion_mnist] [hidden=[512]] [epochs=10] [only=[ep,pc]]
    python scripts/compare.py --config-name compare_bars     # the generative rules, KL on bars

Writes compare.md, compare.csv and compare.png into the hydra run directory.
"""
from __future__ import annotations

import inspect
import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dynets.app.run import evaluation, locate
from dynets.studies.compare import Entry, Metric, compare, markdown, summarise, write

log = logging.getLogger("dynets")


def entry(node: DictConfig, data, hidden: list[int]) -> Entry:
    """Builders of one rule's model, rule and optimizer (Adam unless the row names one) from its
    config node; sizes [features, *hidden, classes] (no label layer for a generative model), the
    row's own ``hidden`` if it has one."""
    labels = [data.n_classes] if getattr(locate(node.model._target_), "supervised", True) else []
    sizes = [data.n_features, *node.get("hidden", hidden), *labels]
    make = instantiate(node.optimizer, _partial_=True) if "optimizer" in node else torch.optim.Adam
    return Entry(model=lambda seed: instantiate(node.model, sizes=sizes, **seeded(node.model, seed)),
                 rule=lambda seed: instantiate(node.rule, **seeded(node.rule, seed)),
                 optimizer=lambda params: make(params, lr=node.lr))


def seeded(node: DictConfig, seed: int) -> dict:
    """``{"seed": seed}`` for a class that takes a seed (its own generator), else nothing."""
    return {"seed": seed} if "seed" in inspect.signature(locate(node._target_)).parameters else {}


@hydra.main(version_base=None, config_path="../configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.only or []) - set(cfg.rules)
    if unknown:
        raise ValueError(f"only= names rules that are not in the table: {sorted(unknown)}; valid: {', '.join(cfg.rules)}")
    data = instantiate(cfg.data)
    entries = {name: entry(node, data, list(cfg.hidden)) for name, node in cfg.rules.items()
               if not cfg.only or name in cfg.only}
    metric = Metric(cfg.metric.name, cfg.metric.goal,
                    evaluation(OmegaConf.to_container(cfg.evaluate, resolve=True), data) if cfg.evaluate else None)
    rows = compare(entries, data, epochs=cfg.epochs, batch_size=cfg.batch_size, seeds=list(cfg.seeds),
                   probe=cfg.probe, reference_settle=instantiate(cfg.reference.settle),
                   adjoint_max_steps=cfg.reference.adjoint_max_steps, metric=metric, progress=log.info)
    paths = write(rows, HydraConfig.get().runtime.output_dir, metric)
    log.info("%s, hidden %s, %d epochs, batch %d, seeds %s\n%s", data.name, list(cfg.hidden), cfg.epochs,
             cfg.batch_size, OmegaConf.to_container(cfg.seeds), markdown(summarise(rows), metric))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

"""The comparison table of every rule: a hydra entry point over :mod:`dynets.studies.compare`.

    python scripts/compare.py [data=fashion_mnist] [sizes.1=512] [epochs=10] [only=[ep,pc]]
    python scripts/compare.py --config-name compare_bars     # the generative rules, KL on bars

Writes compare.md, compare.csv and compare.png into the hydra run directory.
"""
from __future__ import annotations

import logging
import sys

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dynets.app.options import renamed
from dynets.app.builder import data_shape, evaluation
from dynets.studies.compare import Entry, Metric, compare, markdown, summarise, write

log = logging.getLogger("dynets")


def entries(cfg: DictConfig, data) -> dict[str, Entry]:
    """The rows of the table (``only``: those it names), once ``cfg.shape`` holds the data's sizes."""
    with open_dict(cfg):
        cfg.shape = data_shape(data)
    return {name: entry(cfg, node) for name, node in cfg.rules.items() if not cfg.only or name in cfg.only}


def entry(cfg: DictConfig, node: DictConfig) -> Entry:
    """Builders of one row's model, rule and optimizer (Adam unless the row names one), each
    instantiated from its composed node with ``cfg.seed`` the seed of the run; ``lr``: the row's rate;
    ``epochs`` and ``batch_size``, where the row names them: its own (the table's otherwise);
    ``scheduler``, where it names one: a partial learning-rate schedule (``_partial_: true``) the
    optimizer is passed to."""
    make = instantiate(node.optimizer) if "optimizer" in node else torch.optim.Adam
    return Entry(model=lambda seed: seeded(cfg, node.model, seed), rule=lambda seed: seeded(cfg, node.rule, seed),
                 optimizer=lambda params: make(params, lr=node.lr), epochs=node.get("epochs"),
                 batch_size=node.get("batch_size"),
                 scheduler=instantiate(node.scheduler) if node.get("scheduler") else None)


def seeded(cfg: DictConfig, node: DictConfig, seed: int):
    """``node`` built with ``cfg.seed = seed``: the classes that draw their own numbers read it (``seed: ${seed}``)."""
    cfg.seed = seed
    return instantiate(node)


@hydra.main(version_base=None, config_path="../configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.only or []) - set(cfg.rules)
    if unknown:
        raise ValueError(f"only= names rules that are not in the table: {sorted(unknown)}; valid: {', '.join(cfg.rules)}")
    data = instantiate(cfg.data)
    table = entries(cfg, data)
    metric = Metric(cfg.metric.name, cfg.metric.goal,
                    evaluation(OmegaConf.to_container(cfg.evaluate, resolve=True), data) if cfg.evaluate else None)
    rows = compare(table, data, epochs=cfg.epochs, batch_size=cfg.batch_size, seeds=list(cfg.seeds),
                   probe=cfg.probe, reference_settle=instantiate(cfg.reference.settle),
                   adjoint_max_steps=cfg.reference.adjoint_max_steps, metric=metric, progress=log.info)
    paths = write(rows, HydraConfig.get().runtime.output_dir, metric)
    log.info("%s, sizes %s, %d epochs, batch %d (a row's own where it names them), seeds %s\n%s", data.name,
             OmegaConf.to_container(cfg.sizes, resolve=True) if "sizes" in cfg else "the models'", cfg.epochs,
             cfg.batch_size, OmegaConf.to_container(cfg.seeds), markdown(summarise(rows), metric))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    if renamed(sys.argv[1:]):   # an override of the old layout (hidden=): say what replaced it
        sys.exit(f"error: {renamed(sys.argv[1:])}")
    main()

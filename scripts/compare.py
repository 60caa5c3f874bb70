"""The comparison table of every rule: a hydra entry point over :mod:`dynets.compare`.

    python scripts/compare.py [data=fashion_mnist] [hidden=[512]] [epochs=10] [only=[ep,pc]]

Writes compare.md, compare.csv and compare.png into the hydra run directory.
"""
from __future__ import annotations

import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dynets.compare import Entry, compare, markdown, summarise, write

log = logging.getLogger("dynets")


def entry(node: DictConfig, sizes: list[int]) -> Entry:
    """Builders of one rule's model, rule and Adam optimizer from its config node."""
    return Entry(model=lambda: instantiate(node.model, sizes=sizes), rule=lambda: instantiate(node.rule),
                 optimizer=lambda params: torch.optim.Adam(params, lr=node.lr))


@hydra.main(version_base=None, config_path="../configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.only or []) - set(cfg.rules)
    if unknown:
        raise ValueError(f"only= names rules that are not in the table: {sorted(unknown)}; valid: {', '.join(cfg.rules)}")
    data = instantiate(cfg.data)
    sizes = [data.n_features, *cfg.hidden, data.n_classes]
    entries = {name: entry(node, sizes) for name, node in cfg.rules.items() if not cfg.only or name in cfg.only}
    rows = compare(entries, data, epochs=cfg.epochs, batch_size=cfg.batch_size, seeds=list(cfg.seeds),
                   probe=cfg.probe, reference_settle=instantiate(cfg.reference.settle),
                   adjoint_step=cfg.reference.adjoint_step,
                   adjoint_max_steps=cfg.reference.adjoint_max_steps, progress=log.info)
    paths = write(rows, HydraConfig.get().runtime.output_dir)
    log.info("sizes %s, %d epochs, batch %d, seeds %s\n%s", sizes, cfg.epochs, cfg.batch_size,
             OmegaConf.to_container(cfg.seeds), markdown(summarise(rows)))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

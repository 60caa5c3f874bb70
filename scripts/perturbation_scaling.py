"""The perturbation scaling study: a hydra entry point over :mod:`dynets.studies.perturbation_scaling`.

    python scripts/perturbation_scaling.py [cosine.widths=[16,64]] [training.epochs=5] [only=[np,exact]]

Writes perturbation_scaling.csv, .md and .png into the hydra run directory.
"""
from __future__ import annotations

import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from dynets.studies.compare import Entry
from dynets.models import LayeredHopfield
from dynets.studies.perturbation_scaling import cosine_rows, markdown, training_rows, write
from dynets.rules import ImplicitDifferentiation

log = logging.getLogger("dynets")


def entries(cfg: DictConfig, sizes: list[int]) -> dict[str, Entry]:
    """The training runs: each rule on the sigmoid LayeredHopfield of ``sizes`` with Adam."""
    unknown = set(cfg.only or []) - set(cfg.training.rules)
    if unknown:
        raise ValueError(f"only= names rules that are not in training.rules: {sorted(unknown)}; "
                         f"valid: {', '.join(cfg.training.rules)}")
    chosen = [n for n in cfg.training.rules if cfg.only is None or n in cfg.only]
    return {n: Entry(model=lambda: LayeredHopfield(sizes, "sigmoid"), rule=lambda n=n: instantiate(cfg.training.rules[n]),
                     optimizer=lambda params: torch.optim.Adam(params, lr=cfg.training.lr)) for n in chosen}


@hydra.main(version_base=None, config_path="../configs", config_name="perturbation_scaling")
def main(cfg: DictConfig) -> None:
    data = instantiate(cfg.data).flat()   # the study's networks are MLPs
    c = cfg.cosine
    settle = instantiate(c.settle)
    reference = ImplicitDifferentiation(settle, adjoint_tol=c.reference.adjoint_tol,
                                        adjoint_max_steps=c.reference.adjoint_max_steps)
    rows = cosine_rows(data, widths=list(c.widths), probes=list(c.probes), samples=c.samples, sigma=c.sigma,
                       settle=settle, reference=reference, seed=cfg.seed, progress=log.info)
    sizes = [data.n_features, *cfg.training.hidden, data.n_classes]
    rows += training_rows(entries(cfg, sizes), data, epochs=cfg.training.epochs,
                          batch_size=cfg.training.batch_size, seed=cfg.seed, progress=log.info)
    paths = write(rows, HydraConfig.get().runtime.output_dir)
    log.info("\n%s", markdown(rows))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

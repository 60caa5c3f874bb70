"""Delayed nonmatch-to-sample learned by perturbation with eligibility traces: a hydra entry point
over :mod:`dynets.studies.eligibility`.

    python scripts/eligibility.py [networks=3] [trials=4000] [rule.mode=fiete_seung] [seed=0]

Writes eligibility.csv, .md and .png into the hydra run directory.
"""
from __future__ import annotations

import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from dynets.studies.eligibility import learn, write

log = logging.getLogger("dynets")


@hydra.main(version_base=None, config_path="../configs", config_name="eligibility")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)   # 200 units: one thread is as fast, and runs beside others
    model, rule, task = instantiate(cfg.model), instantiate(cfg.rule), instantiate(cfg.task)
    errors = learn(model, rule, task, cfg.trials, progress=log.info)
    labels = [f"seed {cfg.seed + b}" for b in range(cfg.networks)]
    title = f"DNMS, {cfg.rule.mode}, N={cfg.model.units}, dt={cfg.task.dt} ms"
    paths = write(errors, HydraConfig.get().runtime.output_dir, labels, title)
    log.info("\n%s", paths["md"].read_text())


if __name__ == "__main__":
    main()

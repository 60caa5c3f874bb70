"""Recall against load for associative memories: a hydra entry point over :mod:`dynets.studies.recall`.

    python scripts/recall.py [n=200] [alphas=[0.1,0.3]] [seeds=[0]] [epsilon=5e-5] [memory.gain=50]

Writes recall.md, recall.csv and recall.png into the hydra run directory.
"""
from __future__ import annotations

import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from dynets.rules.memory import RecallMonitor
from dynets.studies.recall import Variant, dense_memory, hebbian_memory, slept_memory, study, write

log = logging.getLogger("dynets")


def variants(cfg: DictConfig) -> tuple[dict[str, Variant], RecallMonitor]:
    """The study's memories, each from the composed configs/memory nodes, and the monitor that measures them."""
    store = hebbian_memory(instantiate(cfg.memory), instantiate(cfg.storage))
    return ({"hebbian": store,
             "hebbian + sleep": slept_memory(store, instantiate(cfg.sleep), cfg.epsilon, cfg.max_calls),
             f"dense (n={cfg.dense.degree})": dense_memory(instantiate(cfg.dense))},
            instantiate(cfg.monitor))


@hydra.main(version_base=None, config_path="../configs", config_name="recall")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)   # N = 200: one thread is as fast, and runs beside others
    memories, monitor = variants(cfg)
    rows = study(cfg.n, list(cfg.alphas), list(cfg.seeds), memories, monitor, progress=log.info)
    title = (f"N = {cfg.n}, cues with {cfg.monitor.flip:.0%} of units flipped,\n"
             f"success = overlap ≥ {cfg.monitor.threshold}, {len(cfg.seeds)} seeds")
    paths = write(rows, HydraConfig.get().runtime.output_dir, title)
    log.info("%s\n%s", title, paths["md"].read_text())
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

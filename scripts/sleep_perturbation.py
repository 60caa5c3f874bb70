"""The sleep-perturbation study: a hydra entry point over :mod:`dynets.studies.sleep_perturbation`.

    python scripts/sleep_perturbation.py [seeds=[0]] [only=[ws,np_sleep]] [task_names=[bars]] [tasks.bars.steps=2000]

Writes sleep_perturbation.csv, .md and .png into the hydra run directory.
"""
from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dynets.app.builder import instantiate
from dynets.data import binarised
from dynets.studies.sleep_perturbation import markdown, run, write

log = logging.getLogger("dynets")


def build(node, seed: int):
    """The learner a config node names, seeded with ``seed`` when it draws noise (``None`` for ``None``)."""
    if node is None:
        return None
    node = dict(node)
    return instantiate({**node, "seed": seed} if "sigma" in node else node)


@hydra.main(version_base=None, config_path="../configs", config_name="sleep_perturbation")
def main(cfg: DictConfig) -> None:
    rows = []
    for name in cfg.task_names:
        task = OmegaConf.to_container(cfg.tasks[name], resolve=True)
        unknown = set(cfg.only or []) - set(task["methods"])
        if cfg.only is not None and unknown == set(cfg.only):
            raise ValueError(f"only= names no method of task {name}: {sorted(unknown)}; valid: {', '.join(task['methods'])}")
        methods = {m: v for m, v in task["methods"].items() if cfg.only is None or m in cfg.only}
        data = binarised(instantiate(task["data"])).flat()
        rows += run(name, data, methods, sizes=task["sizes"], steps=task["steps"], batch_size=task["batch_size"],
                    lr=task["lr"], seeds=list(cfg.seeds), build=build, progress=log.info)
    paths = write(rows, HydraConfig.get().runtime.output_dir)
    log.info("\n%s", markdown(rows))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

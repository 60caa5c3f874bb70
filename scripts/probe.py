"""Self-supervised representations measured by probes: a hydra entry point over :mod:`dynets.studies.selfsup`.

    python scripts/probe.py [data=fashion_mnist] [hidden=[256]] [epochs=3] [only=[pc,ep]]

Writes probe.md, probe.csv and the reconstruction / dream PNGs into the hydra run directory.
"""
from __future__ import annotations

import logging

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dynets.app.run import instantiate
from dynets.studies.selfsup import Method, Probes, study, write

log = logging.getLogger("dynets")


@hydra.main(version_base=None, config_path="../configs", config_name="probe")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)   # small layers: one thread is nearly as fast, and runs beside others
    config = OmegaConf.to_container(cfg, resolve=True)
    unknown = set(config["only"] or []) - set(config["methods"])
    if unknown:
        raise ValueError(f"only= names methods that are not in the study: {sorted(unknown)}; "
                         f"valid: {', '.join(config['methods'])}")
    methods = {name: Method(**instantiate(node)) for name, node in config["methods"].items()
               if not config["only"] or name in config["only"]}
    data, out = instantiate(config["data"]), HydraConfig.get().runtime.output_dir
    rows = study(methods, data, config["hidden"], epochs=config["epochs"], batch_size=config["batch_size"],
                 seed=config["seed"], layer=config["layer"], probes=Probes(**config["probes"]), out_dir=out,
                 progress=log.info)
    paths = write(rows, out, f"{data.name}, hidden {config['hidden']}, {config['epochs']} epochs")
    log.info("\n%s", paths["md"].read_text())


if __name__ == "__main__":
    main()

"""Self-supervised representations measured by probes: a hydra entry point over :mod:`dynets.studies.selfsup`.

    python scripts/probe.py [data=fashion_mnist] [sizes.1=256] [epochs=3] [only=[pc,ep]]

Writes probe.md, probe.csv and the reconstruction / dream PNGs into the hydra run directory.
"""
from __future__ import annotations

import logging
import sys

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from dynets.app.options import renamed
from dynets.app.builder import data_shape, instantiate
from dynets.studies.selfsup import Method, Probes, study, write

log = logging.getLogger("dynets")


def methods(cfg: DictConfig, data) -> tuple[dict[str, Method], list[int]]:
    """The study's methods (``only``: those it names), each from its composed nodes, and the
    representation's sizes, once ``cfg.shape`` holds the data's sizes."""
    with open_dict(cfg):
        cfg.shape = data_shape(data)
    config = OmegaConf.to_container(cfg, resolve=True)
    return ({name: Method(**instantiate(node)) for name, node in config["methods"].items()
             if not config["only"] or name in config["only"]}, config["sizes"])


@hydra.main(version_base=None, config_path="../configs", config_name="probe")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)   # small layers: one thread is nearly as fast, and runs beside others
    unknown = set(cfg.only or []) - set(cfg.methods)
    if unknown:
        raise ValueError(f"only= names methods that are not in the study: {sorted(unknown)}; "
                         f"valid: {', '.join(cfg.methods)}")
    data, out = instantiate(cfg.data).flat(), HydraConfig.get().runtime.output_dir
    chosen, sizes = methods(cfg, data)
    rows = study(chosen, data, sizes, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, layer=cfg.layer,
                 probes=Probes(**OmegaConf.to_container(cfg.probes)), out_dir=out, progress=log.info)
    paths = write(rows, out, f"{data.name}, sizes {sizes}, {cfg.epochs} epochs")
    log.info("\n%s", paths["md"].read_text())


if __name__ == "__main__":
    if renamed(sys.argv[1:]):   # an override of the old layout (hidden=): say what replaced it
        sys.exit(f"error: {renamed(sys.argv[1:])}")
    main()

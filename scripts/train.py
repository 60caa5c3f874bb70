"""Train a dynets model: the one hydra entry point.

    python scripts/train.py rule.beta=0.2 settle=fast trainer.epochs=5 seed=3

Writes into the hydra run directory: .hydra/config.yaml (the composed config),
metrics.jsonl (one object per epoch), summary.json and checkpoint.pt.
"""
from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dynets.data import Dataset
from dynets.logging import JsonLinesLogger
from dynets.train import fit, layer_param_groups


def build_model(cfg: DictConfig, data: Dataset) -> torch.nn.Module:
    """The model config names its hidden sizes; the ends come from the data."""
    node = OmegaConf.to_container(cfg, resolve=True)
    hidden = node.pop("hidden")
    return instantiate(node, sizes=[data.n_features, *hidden, data.n_classes])


def build(cfg: DictConfig):
    """Data, model, rule and optimizer of a composed config (seeded before the model)."""
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    model = build_model(cfg.model, data)
    rule = instantiate(cfg.rule)
    groups = layer_param_groups(model, cfg.optimizer.lr, cfg.trainer.layer_lrs)
    optimizer = instantiate(cfg.optimizer)(groups)
    return data, model, rule, optimizer


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    data, model, rule, optimizer = build(cfg)
    loggers = [instantiate(node) for node in cfg.logger.values()] + [JsonLinesLogger(run_dir / "metrics.jsonl")]
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.start(config, run_dir)
    summary = fit(model, rule, data, optimizer, epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
                  seed=cfg.seed, loggers=loggers, run_dir=run_dir)
    return summary["val_accuracy"]   # what a hydra sweeper would optimise


if __name__ == "__main__":
    main()

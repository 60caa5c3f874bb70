"""Train a dynets model: the one hydra entry point (the app itself is :mod:`dynets.app`).

    python scripts/train.py rule.beta=0.2 settle=fast trainer.epochs=5 seed=3
    python scripts/train.py hydra.run.dir=<run dir> resume=true     # continue a killed run
    python scripts/train.py resume=<run dir>                        # the same
    torchrun --nproc_per_node 4 scripts/train.py hydra.run.dir=<run dir> ...   # data-parallel

Writes into the hydra run directory: .hydra/config.yaml (the composed config),
metrics.jsonl (one object per epoch), summary.json, checkpoint.pt and checkpoint_prev.pt.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dynets import app


def resume_dir(resume, default: str) -> str:
    """hydra.run.dir: the run directory named by ``resume=<dir>``, else ``default``."""
    return resume if isinstance(resume, str) else default


OmegaConf.register_new_resolver("resume_dir", resume_dir)


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(cfg.resume) if isinstance(cfg.resume, str) else Path(HydraConfig.get().runtime.output_dir)
    # What a hydra sweeper optimises: the validation metric that selects the best epoch.
    return app.main(config, run_dir)[config["trainer"]["select"]]


if __name__ == "__main__":
    main()

"""Train a dynets model: the one hydra entry point (the app itself is :mod:`dynets.app`).

    python scripts/train.py rule.beta=0.2 settle=fast trainer.epochs=5 seed=3
    python scripts/train.py hydra.run.dir=<run dir> resume=true     # continue a killed run
    python scripts/train.py resume=<run dir>                        # the same
    torchrun --nproc_per_node 4 scripts/train.py hydra.run.dir=<run dir> ...   # data-parallel
    python scripts/train.py -m hydra/sweeper=optuna +search=ep_beta_lr          # a search (docs/clusters.md)
    python scripts/train.py -m hydra/launcher=slurm rule.beta=0.1,0.5 resume=true   # SLURM jobs

Writes into the hydra run directory: .hydra/config.yaml (the composed config),
metrics.jsonl (one object per epoch), summary.json, checkpoint.pt and checkpoint_prev.pt.
A mistake in the config (dynets.app.USER_ERRORS) prints one message and exits with status 1;
Ctrl-C prints the command that resumes the run and exits with status 130.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dynets.app import run as app
from dynets.app.loggers import wandb_group
from dynets.app.options import renamed

# The hydra plugins of the optional extra "cluster", and the overrides that select them.
OPTUNA, SUBMITIT = "hydra_plugins.hydra_optuna_sweeper", "hydra_plugins.hydra_submitit_launcher"
NEEDS = {("hydra/sweeper", "optuna"): OPTUNA, ("search", None): OPTUNA,   # configs/search/ selects optuna
         **{("hydra/launcher", name): SUBMITIT for name in ("submitit_local", "submitit_slurm", "slurm", "local")}}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:   # not even the hydra_plugins namespace
        return False


def check_plugins(argv: list[str]) -> None:
    """Exit with a message naming the extra when an override selects a plugin that is not
    installed (hydra would only say "Could not find 'hydra/sweeper/optuna'")."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        module = NEEDS.get((key, value), NEEDS.get((key, None)))
        if module and not installed(module):
            sys.exit(f"{arg} needs the hydra plugin {module.split('.')[1].replace('_', '-')}, which is not "
                     'installed: pip install -e ".[cluster]" (in the dynets checkout)')


def resume_dir(resume, default: str) -> str:
    """hydra.run.dir: the run directory named by ``resume=<dir>``, else ``default``."""
    return resume if isinstance(resume, str) else default


OmegaConf.register_new_resolver("resume_dir", resume_dir)


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    config = OmegaConf.to_container(cfg, resolve=True)
    hydra_config = HydraConfig.get()
    if hydra_config.mode == RunMode.MULTIRUN:   # one wandb group per multirun or search
        config["logger"] = wandb_group(config["logger"], str(hydra_config.sweep.dir))
    run_dir = Path(cfg.resume) if isinstance(cfg.resume, str) else Path(hydra_config.runtime.output_dir)
    # A user's mistake exits with its message alone, Ctrl-C with the command that resumes the run.
    summary = app.run(config, run_dir, list(hydra_config.overrides.task), f"python {sys.argv[0]}")
    # What a hydra sweeper optimises: the validation metric that selects the best epoch.
    return summary[config["trainer"]["select"]]


if __name__ == "__main__":
    check_plugins(sys.argv[1:])
    if renamed(sys.argv[1:]):   # an override of the old layout: say what replaced it
        sys.exit(f"error: {renamed(sys.argv[1:])}")
    main()

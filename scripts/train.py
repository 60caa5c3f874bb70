"""Train a dynets model: the one hydra entry point.

    python scripts/train.py rule.beta=0.2 settle=fast trainer.epochs=5 seed=3
    python scripts/train.py hydra.run.dir=<run dir> resume=true     # continue a killed run
    python scripts/train.py resume=<run dir>                        # the same
    torchrun --nproc_per_node 4 scripts/train.py hydra.run.dir=<run dir> ...   # data-parallel

Writes into the hydra run directory: .hydra/config.yaml (the composed config),
metrics.jsonl (one object per epoch), summary.json, checkpoint.pt and checkpoint_prev.pt.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dynets import Condition, checkpoint, diagnostics, distributed, plots
from dynets.data import Dataset
from dynets.logging import JsonLinesLogger, flatten
from dynets.rules import ImplicitDifferentiation
from dynets.train import fit, layer_param_groups

log = logging.getLogger("dynets")
# Config keys that may change when a run is resumed, without a warning.
RESUMABLE_CHANGES = ("resume", "trainer.epochs", "logger")
PROBE = 64   # validation samples of the alignment probe and the settling plot


def resume_dir(resume, default: str) -> str:
    """hydra.run.dir: the run directory named by ``resume=<dir>``, else ``default``."""
    return resume if isinstance(resume, str) else default


OmegaConf.register_new_resolver("resume_dir", resume_dir)


def build_model(cfg: DictConfig, data: Dataset) -> torch.nn.Module:
    """The model config names its hidden sizes; the ends come from the data."""
    node = OmegaConf.to_container(cfg, resolve=True)
    hidden = node.pop("hidden")
    return instantiate(node, sizes=[data.n_features, *hidden, data.n_classes])


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else CPU; under torchrun, each process its own GPU."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def build(cfg: DictConfig):
    """Data, model, rule and optimizer of a composed config (seeded before the model), on
    ``trainer.device``."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    data = instantiate(cfg.data).to(device)
    model = build_model(cfg.model, data).to(device)
    rule = instantiate(cfg.rule)
    groups = layer_param_groups(model, cfg.optimizer.lr, cfg.trainer.layer_lrs)
    optimizer = instantiate(cfg.optimizer)(groups)
    return data, model, rule, optimizer


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(dotted key, old value, new value)`` for every leaf where two nested dicts differ."""
    old, new = flatten(old), flatten(new)
    pairs = ((k, old.get(k, "<absent>"), new.get(k, "<absent>")) for k in sorted(set(old) | set(new)))
    return [(k, a, b) for k, a, b in pairs if a != b]


def check_config(saved: dict, config: dict, source: str) -> None:
    """A resumed run must have its checkpoint's model (else an error listing the differences);
    other changes, except those in RESUMABLE_CHANGES, are allowed with a warning."""
    diffs = [d for d in differences(saved, config) if not d[0].startswith(RESUMABLE_CHANGES)]
    model = [d for d in diffs if d[0].startswith("model.")]
    if model:
        raise checkpoint.CheckpointError(f"resume: {source} was trained with a different model ({_text(model)}). "
                                         "Pass that run's model overrides again, or start a new run")
    if diffs:
        log.warning("resume: the config differs from the one %s was trained with: %s", source, _text(diffs))


def _text(diffs: list[tuple[str, object, object]]) -> str:
    return "; ".join(f"{key}: {old} -> {new}" for key, old, new in diffs)


def resume_from(cfg: DictConfig, run_dir: Path, config: dict) -> dict | None:
    """The checkpoint to continue from, ``None`` for a fresh run; cuts metrics.jsonl after its epoch.

    ``resume=true`` on a directory without a checkpoint starts the run (so that a job can be
    requeued with the same command); ``resume=<dir>`` names a run, and must find its checkpoint.
    """
    if not cfg.resume:
        return None
    state = checkpoint.load(run_dir)
    if state is not None:
        check_config(state["config"], config, str(run_dir / checkpoint.CHECKPOINT))
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])
    elif isinstance(cfg.resume, str):
        raise FileNotFoundError(f"resume={cfg.resume}: no {checkpoint.CHECKPOINT} there to continue from "
                                "(to start a new run, leave out resume=)")
    else:
        log.warning("resume: %s holds no checkpoint, starting at epoch 1 (to continue a run, pass "
                    "hydra.run.dir=<its directory> resume=true, or resume=<its directory>)", run_dir)
    if distributed.is_main():
        checkpoint.truncate_metrics(run_dir / "metrics.jsonl", 0 if state is None else state["epoch"])
    return state


def train(cfg: DictConfig) -> float:
    """Build the run of ``cfg``, train it (resuming if asked) and return the selected validation accuracy."""
    run_dir = Path(cfg.resume) if isinstance(cfg.resume, str) else Path(HydraConfig.get().runtime.output_dir)
    data, model, rule, optimizer = build(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    state = resume_from(cfg, run_dir, config)
    loggers = []
    if distributed.is_main():
        loggers = [instantiate(node) for node in cfg.logger.values()] + [JsonLinesLogger(run_dir / "metrics.jsonl")]
    for logger in loggers:
        logger.start(config, run_dir)
    x_probe, y_probe = data.val.x[:PROBE], data.val.y[:PROBE]
    probes = [alignment_probe(rule, x_probe, y_probe)] if cfg.trainer.alignment else []
    summary = fit(model, rule, data, optimizer, epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
                  seed=cfg.seed, loggers=loggers, run_dir=run_dir, resume_from=state, config=config, probes=probes)
    if distributed.is_main():
        write_plots(run_dir, model, Condition(x_probe, model.target(y_probe)), rule.settle)
    for logger in loggers:   # after the plots: the wandb logger uploads the PNGs it finds
        logger.finish(summary)
    return summary["val_accuracy"]   # what a hydra sweeper would optimise


def alignment_probe(rule, x: torch.Tensor, y: torch.Tensor):
    """Per-epoch cosine of the rule's update with the exact equilibrium gradient on a fixed
    validation batch, as ``align_cos/<parameter>`` metrics (the key plots read)."""
    reference = ImplicitDifferentiation(rule.settle)
    return lambda model: plots.alignment_metrics(diagnostics.alignment(model, rule, reference, x, y))


def write_plots(run_dir: Path, model, probe: Condition, settle_options) -> None:
    """The run's PNGs; a failed plot is a warning, never the loss of a finished run."""
    try:
        paths = plots.plot_run(run_dir, model, probe, settle_options)
        log.info("plots: %s", ", ".join(p.name for p in paths.values()))
    except Exception as err:  # noqa: BLE001 - any plotting failure must not sink the run
        log.warning("plots failed: %s", err)


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    distributed.init_from_env()   # under torchrun; a no-op on one process
    if not distributed.is_main():  # rank 0 speaks for all
        log.setLevel(logging.ERROR)
    try:
        return train(cfg)
    finally:
        distributed.close()


if __name__ == "__main__":
    main()

"""Every config composes and instantiates; every exported class has a YAML; the hydra app runs end
to end and fails loudly."""
import inspect
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate as hydra_instantiate
from omegaconf import OmegaConf, open_dict

import dynets.costs
import dynets.models
import dynets.rules
from dynets.app.run import build, instantiate, locate
from dynets.capabilities import provides
from dynets.app.options import ConfigError
from dynets.data import patterns

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# configs/sweep holds wandb sweep files, checked by test_sweeps.py; configs/search Optuna searches and
# configs/hydra hydra's launchers, checked by test_cluster.py; configs/memory the recall study's memories
# (test_every_memory_builds); configs/trial the eligibility study's network, rule and task
# (test_eligibility.test_the_study_config_builds).
GROUPS = sorted(p.name for p in CONFIGS.iterdir()
                if p.is_dir() and p.name not in ("sweep", "search", "hydra", "memory", "trial"))


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.random((60, 5)), y=np.arange(60) % 3)
    # Beside it, tiny CIFAR-10 and CIFAR-100 python batches (data.path=its folder).
    for name, key, n in [*((f"data_batch_{i}", b"labels", 10) for i in range(1, 6)), ("test_batch", b"labels", 10),
                         ("train", b"fine_labels", 20), ("test", b"fine_labels", 20)]:
        with open(path.parent / name, "wb") as handle:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(range(n))}, handle)
    return path


def overrides_for(group, option, npz_file):
    helmholtz = ["model=helmholtz", "data=bars"]   # binary data only
    extra = {("data", "npz"): [f"data.path={npz_file}"], ("data", "mnist"): ["data.path=/nonexistent"],
             ("data", "cifar10"): [f"data.path={npz_file.parent}"],
             ("experiment", "cifar10_ep"): [f"data.path={npz_file.parent}"], ("data", "cifar100"): [f"data.path={npz_file.parent}"],
             ("model", "helmholtz"): ["rule=wake_sleep", "data=bars"], ("rule", "rws"): helmholtz,
             ("rule", "wake_sleep"): helmholtz, ("rule", "sleep"): helmholtz,
             ("rule", "backprop"): ["model=pc"]}   # a feedforward pass
    choice = f"+{group}={option}" if group == "experiment" else f"{group}={option}"   # experiments are opt-in
    return [choice, "trainer.epochs=1"] + extra.get((group, option), [])


def trains(rule: str, model: str) -> bool:
    """Whether the rule config ``rule`` can train the model config ``model`` (``Rule.needs``)."""
    target = lambda group, option: yaml.safe_load((CONFIGS / group / f"{option}.yaml").read_text())["_target_"]
    return all(provides(get_class(target("model", model)), cap) for cap in get_class(target("rule", rule)).needs)


def composed(overrides):
    """The plain config of ``overrides``; a rule or model chosen alone gets the first option of
    the other group that trains with it when the default does not (build refuses a mismatched pair)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        rule, model = cfg.hydra.runtime.choices.rule, cfg.hydra.runtime.choices.model
        if not trains(rule, model):
            fits = [f"model={m}" for m in options("model") if trains(rule, m)] if f"rule={rule}" in overrides \
                else [f"rule={r}" for r in options("rule") if trains(r, model)]
            cfg = next(c for c in (compose("train", overrides=[*overrides, f], return_hydra_config=True) for f in fits)
                       if builds(c))
    return plain(cfg)


def plain(cfg):
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)


def builds(cfg) -> bool:
    """Whether the app builds ``cfg`` (a rule's own check, e.g. Backprop's feedforward pass, passes)."""
    try:
        build(plain(cfg.copy()))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes_and_instantiates(group, option, npz_file):
    config = composed(overrides_for(group, option, npz_file))
    if (group, option) == ("data", "mnist"):
        with pytest.raises(ConfigError, match="data=mnist: looked for .* data.path"):
            build(config)
        return
    if config["data"]["_target_"].endswith("fashion_mnist") and not Path("/usr/share/datasets/fashion-mnist").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    data, model, rule, optimizer = build(config)
    assert model.in_features == data.n_features
    assert model.out_features == data.n_classes or not model.supervised   # a generative model has no label layer
    assert optimizer.param_groups[0]["lr"] == config["optimizer"]["lr"]
    for node in config["logger"].values():
        assert hasattr(instantiate(node), "log")


def run_app(tmp_path, *overrides):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={tmp_path}", *overrides],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_app_writes_its_run_directory(tmp_path, npz_file):
    out = run_app(tmp_path, "data=npz", f"data.path={npz_file}", "trainer.epochs=2", "settle=fast",
                  "rule.beta=0.2", "logger=none")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 <= summary["test_accuracy"] <= 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "checkpoint.pt").exists()
    assert "beta: 0.2" in (tmp_path / ".hydra" / "config.yaml").read_text()


def test_a_generative_run_is_selected_by_kl_and_writes_its_dreams(tmp_path):
    out = run_app(tmp_path, "+experiment=bars_ws", "trainer.epochs=3", "data.n_train=2000", "logger=none")
    assert out.returncode == 0, out.stderr
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    kl = [e["kl_bits"] for e in epochs]   # KL(data‖model): the model's, reported once, not once per split
    assert summary["kl_bits"] == pytest.approx(min(kl)) and summary["best_epoch"] == 1 + kl.index(min(kl))
    assert summary["kl_bits"] < 8.12 - 2   # well below the best independent-pixel model's 8.12 bits
    assert not any(k.endswith("_kl_bits") for k in summary) and not any("val_kl_bits" in e for e in epochs)
    nll = [summary[f"{part}_nll_bits"] for part in ("train", "val", "test")]   # each split's own samples
    assert len(set(nll)) == 3
    assert not any(k.startswith("align_cos") for e in epochs for k in e)   # no labelled loss to align with
    assert (tmp_path / "dreams.png").exists() and (tmp_path / "learning_curves.png").exists()


@pytest.mark.parametrize("override,message", [
    ("model=nope", "Available options"),
    ("settle.method=runge", "valid: euler"),
    ("data=mnist", "data.path"),
])
def test_bad_names_are_loud(tmp_path, override, message):
    out = run_app(tmp_path, override, "trainer.epochs=1", "logger=none")
    assert out.returncode != 0 and message in out.stderr + out.stdout


def exported() -> list[type]:
    """The classes a user builds: the models, rules and costs of dynets.models and dynets.rules
    (``__all__``) and of dynets.costs, less the abstract bases (DynamicalModel, EnergyModel, Rule,
    Cost); an ``Update`` is what a rule returns, not something a config builds."""
    names = [getattr(dynets.models, n) for n in dynets.models.__all__] + [getattr(dynets.rules, n) for n in dynets.rules.__all__]
    costs = [c for c in vars(dynets.costs).values() if inspect.isclass(c) and c.__module__ == dynets.costs.__name__]
    return [c for c in names + costs
            if inspect.isclass(c) and not inspect.isabstract(c) and c is not dynets.rules.Update]


def test_every_exported_class_has_a_yaml():
    targets = {locate(node["_target_"]) for path in CONFIGS.rglob("*.yaml")
               if isinstance(node := yaml.safe_load(path.read_text()), dict) and "_target_" in node}
    classes = exported()
    assert {"Backprop", "SleepInterleaved", "RecallMonitor", "DenseAssociativeMemory", "CrossEntropy"} <= \
        {c.__name__ for c in classes}   # the enumeration sees them
    missing = [c.__name__ for c in classes if c not in targets]
    assert not missing, f"no YAML in configs/ has _target_ naming {', '.join(missing)}"


@pytest.mark.parametrize("cost", options("rule/cost"))
def test_every_cost_builds_as_the_rules_cost(cost):
    """``+rule/cost=<name>`` gives the run's rule that cost (and every rule YAML takes one)."""
    config = composed(["+rule/cost=" + cost, "model=pc", "rule=pc", "trainer.device=cpu"])
    _, _, rule, _ = build(config)
    target = yaml.safe_load((CONFIGS / "rule" / "cost" / f"{cost}.yaml").read_text())["_target_"]
    assert type(rule.cost) is locate(target)


def test_every_memory_builds_and_the_recall_study_composes_them():
    """configs/memory: each YAML builds what its _target_ names with its fields (the partial ones given
    what the study gives: units, patterns, a seed), as configs/recall.yaml composes and overrides them."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("recall")
    xi = patterns(3, 20, seed=0)
    built = {"memory": hydra_instantiate(cfg.memory)(20), "dense": hydra_instantiate(cfg.dense)(xi),
             "storage": hydra_instantiate(cfg.storage), "sleep": hydra_instantiate(cfg.sleep)(seed=1),
             "monitor": hydra_instantiate(cfg.monitor)}
    names = {"memory": "associative", "dense": "dense", "storage": "hebbian_storage", "sleep": "hebbian_sleep",
             "monitor": "recall_monitor"}
    assert set(names.values()) == set(options("memory"))
    for key, name in names.items():
        assert type(built[key]) is locate(yaml.safe_load((CONFIGS / "memory" / f"{name}.yaml").read_text())["_target_"])
    assert built["memory"].n == 20 and built["memory"].gain == built["dense"].gain == cfg.memory.gain == 100.0
    assert built["dense"].degree == 3 and built["sleep"].dreams == 100 and built["sleep"].monitor == built["monitor"]
    assert built["monitor"].settle == hydra_instantiate(cfg.settle) and built["sleep"].settle == built["monitor"].settle


@pytest.mark.parametrize("overrides,sizes", [
    ([], [64, 256, 10]),
    (["model.sizes.1=32"], [64, 32, 10]),
    (["model.sizes=[${shape.features},16,8,${shape.classes}]"], [64, 16, 8, 10]),
    (["model=readback", "rule=chl", "task=self_supervised"], [64, 256, 64]),   # [input, 256]: it adds the read-back layer
    (["task=self_supervised", "model=pc", "model.arrangement=generative", "rule=pc", "rule.variant=unsupervised"],
     [64, 256]),   # no labels: shape.classes is null, no label layer
])
def test_a_models_sizes_read_the_data(overrides, sizes):
    _, model, _, _ = build(composed([*overrides, "trainer.device=cpu"]))
    assert list(model.sizes) == sizes


def test_the_old_hidden_override_names_the_new_way(tmp_path):
    out = run_app(tmp_path, "model.hidden=[512]", "trainer.epochs=1", "logger=none")
    assert out.returncode == 1 and "model.sizes.1=512" in out.stderr and "model.hidden" in out.stderr
    config = composed(["trainer.device=cpu"])
    config["model"]["hidden"] = [512]   # a plain config of the old layout
    with pytest.raises(ConfigError, match="model.hidden: a model's sizes are model.sizes"):
        build(config)

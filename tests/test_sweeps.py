"""Every point a wandb sweep file can launch is a run that scripts/train.py accepts; hydra
multirun works and scripts/collect.py tables its runs."""
import csv
import itertools
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
# The agent's own rendering of a run's parameters into command-line arguments.
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from dynets.app.run import build, instantiate
from dynets.app.collect import natural_key

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

SWEEPS = sorted((CONFIGS / "sweep").glob("*.yaml"))
SWEEP_KEYS = {"program", "method", "metric", "parameters", "command", "early_terminate", "name", "description",
              "project", "entity", "run_cap"}
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
SAMPLERS = {
    "uniform": lambda rng, lo, hi: rng.uniform(lo, hi),
    "log_uniform_values": lambda rng, lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi))),
    "int_uniform": lambda rng, lo, hi: rng.randint(lo, hi),
}


def named_values(spec: dict) -> list:
    """Every value a parameter names: its ``value``, its ``values``, or its range's ends."""
    if "value" in spec:
        return [spec["value"]]
    return list(spec["values"]) if "values" in spec else [spec["min"], spec["max"]]


def sample(spec: dict, rng: random.Random):
    """One draw from a parameter, as wandb's random search makes it (a range without a
    ``distribution`` is int_uniform for int ends, else uniform)."""
    if "min" not in spec:
        return rng.choice(named_values(spec))
    default = "int_uniform" if isinstance(spec["min"], int) else "uniform"
    distribution = spec.get("distribution", default)
    if distribution not in SAMPLERS:
        raise ValueError(f"distribution {distribution!r} has no sampler here; add one to SAMPLERS")
    return SAMPLERS[distribution](rng, spec["min"], spec["max"])


def points(sweep: dict, n_random: int = 3) -> list[dict]:
    """A grid's every point; for random and bayes, every named value once (the others at
    their first) and ``n_random`` joint draws."""
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        return [dict(zip(params, combo)) for combo in itertools.product(*map(named_values, params.values()))]
    first = {name: named_values(spec)[0] for name, spec in params.items()}
    rng = random.Random(0)
    return ([{**first, name: v} for name, spec in params.items() for v in named_values(spec)]
            + [{name: sample(spec, rng) for name, spec in params.items()} for _ in range(n_random)])


def is_number_string(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def check_run(overrides: list[str], point: dict) -> None:
    """Compose and build the run of ``overrides``; every parameter lands where it says."""
    cfg = compose("train", overrides=overrides, return_hydra_config=True)
    for key, value in point.items():
        landed = cfg.hydra.runtime.choices[key] if (CONFIGS / key).is_dir() else OmegaConf.select(cfg, key)
        assert landed == value, f"{key}={value} composed as {landed}"
    with open_dict(cfg):
        del cfg["hydra"]
    config = OmegaConf.to_container(cfg, resolve=True)
    build(config)
    for node in config["logger"].values():
        instantiate(node)


def check_sweep(sweep: dict) -> int:
    """Raise if ``sweep`` could launch a run that scripts/train.py rejects or that does not
    report to wandb; return the number of runs composed."""
    assert set(sweep) <= SWEEP_KEYS, f"unknown sweep keys {set(sweep) - SWEEP_KEYS}"
    assert sweep["command"] == COMMAND, "hydra takes overrides: the command must end in ${args_no_hyphens}"
    assert (ROOT / sweep["program"]).is_file(), f"program {sweep['program']} does not exist"
    assert sweep["metric"] == {"name": "val_accuracy", "goal": "maximize"}   # select on validation, never test
    assert sweep["parameters"]["logger"] == {"value": "wandb"}, "sweep runs must log to wandb"
    for name, spec in sweep["parameters"].items():
        assert sweep["method"] != "grid" or {"value", "values"} & set(spec), f"grid parameter {name} has no values"
        for v in named_values(spec):   # YAML 1.1 reads 5e-4 as a string: wandb would treat it as a category
            assert not is_number_string(v), f"{name}: {v!r} is a string; write the number as 0.0005"
    runs = points(sweep)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        for point in runs:
            args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
            check_run(args["args_no_hyphens"], point)
    return len(runs)


def test_there_are_the_sweeps_the_readme_names():
    assert {"ep_beta_lr", "rules", "ep_variants", "settle_tol", "ep_bayes"} <= {p.stem for p in SWEEPS}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_point_of_every_sweep_composes_and_builds(path):
    sweep = yaml.safe_load(path.read_text())
    n_runs = check_sweep(sweep)
    if sweep["method"] == "grid":
        assert n_runs == math.prod(len(named_values(spec)) for spec in sweep["parameters"].values())


def test_random_points_cover_every_value_and_stay_in_range():
    sweep = {"method": "random", "parameters": {
        "rule.beta": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
        "seed": {"min": 0, "max": 9}, "rule": {"value": "ep"}, "settle": {"values": ["fast", "dopri5"]}}}
    runs = points(sweep, n_random=50)
    named, drawn = runs[:-50], runs[-50:]
    assert {name: {r[name] for r in named} for name in sweep["parameters"]} == {
        "rule.beta": {0.01, 1.0}, "seed": {0, 9}, "rule": {"ep"}, "settle": {"fast", "dopri5"}}
    assert all(0.01 <= r["rule.beta"] <= 1.0 and r["seed"] in range(10) and r["settle"] in ("fast", "dopri5")
               for r in drawn)
    assert sum(r["rule.beta"] < 0.1 for r in drawn) > 15   # log-uniform: half the draws below 0.1, uniform 9%


@pytest.mark.parametrize("bad,message", [
    ({"rule.betta": {"values": [0.1]}}, "betta"),                     # a key train.yaml lacks
    ({"rule": {"values": ["ep", "hebb"]}}, "rule/hebb"),              # a config option that does not exist
    ({"rule.variant": {"values": ["sideways"]}}, "unknown EP variant"),  # a value the rule rejects
    ({"optimizer.lr": {"values": ["5e-4"]}}, "optimizer.lr"),         # a number YAML read as a string
])
def test_a_bad_sweep_fails_the_check(bad, message):
    sweep = yaml.safe_load((CONFIGS / "sweep" / "ep_beta_lr.yaml").read_text())
    sweep["parameters"] = {**sweep["parameters"], **bad}
    with pytest.raises(Exception, match=message):
        check_sweep(sweep)


@pytest.mark.parametrize("bad,message", [
    ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]}, "args_no_hyphens"),
    ({"program": "scripts/trian.py"}, "does not exist"),
    ({"parameter": {}}, "unknown sweep keys"),
])
def test_a_bad_sweep_header_fails_the_check(bad, message):
    sweep = {**yaml.safe_load((CONFIGS / "sweep" / "ep_beta_lr.yaml").read_text()), **bad}
    with pytest.raises(AssertionError, match=message):
        check_sweep(sweep)


def test_collect_orders_runs_by_number():
    paths = [Path("m/10"), Path("m/2"), Path("m/1/b"), Path("m/1/a")]
    assert sorted(paths, key=natural_key) == [Path("m/1/a"), Path("m/1/b"), Path("m/2"), Path("m/10")]


def test_multirun_and_collect(tmp_path):
    """A real two-point multirun, plus a copy of a run killed before its summary."""
    sweep_dir = tmp_path / "multirun"
    train = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "rule.beta=0.1,0.5",
                            "trainer.epochs=1", "model.sizes.1=16", "settle=fast", "logger=none",
                            f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert train.returncode == 0, train.stderr
    shutil.copytree(sweep_dir / "0", sweep_dir / "2")
    (sweep_dir / "2" / "summary.json").unlink()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), str(sweep_dir),
                          "--out", str(tmp_path / "table.csv")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with (tmp_path / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["run"], r["rule.beta"], r["settle"], r["status"]) for r in rows] == [
        ("0", "0.1", "fast", "done"), ("1", "0.5", "fast", "done"), ("2", "0.1", "fast", "incomplete (1 epochs logged)")]
    for row in rows[:2]:
        summary = json.loads((sweep_dir / row["run"] / "summary.json").read_text())
        assert set(summary) <= set(row)
        assert {k: float(row[k]) for k, v in summary.items() if isinstance(v, (int, float))} == {
            k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    assert rows[2]["val_accuracy"] == ""
    table = out.stdout.strip().splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| run | status | rule.beta |")

"""Searches with no server and jobs on a cluster: hydra's Optuna sweeper and submitit launcher
(the optional extra "cluster"). Every search file composes and builds; an Optuna search marks
its best trial by validation accuracy and continues from its SQLite storage after a kill;
submitit runs the jobs of a multirun, and one killed mid-run and resubmitted with resume=true
ends as the uninterrupted run, as does a job that a stand-in SLURM preempts and submitit
requeues; the runs of a multirun share a wandb group; without the plugins, selecting them is an
error that names the extra."""
import csv
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from dynets.app import collect
from dynets.app.run import build
from dynets.app.loggers import wandb_group

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TRAIN = str(ROOT / "scripts" / "train.py")
SEARCHES = sorted((CONFIGS / "search").glob("*.yaml"))
# Small and fast; 1 epoch.
TINY = ["trainer.epochs=1", "model.sizes.1=16", "settle=fast", "logger=none", "trainer.alignment=false",
        "rule.allow_unconverged=true"]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


EXTRA = 'not installed: pip install -e ".[cluster]" (make setup installs it)'
optuna_plugin = pytest.mark.skipif(not installed("hydra_plugins.hydra_optuna_sweeper"), reason=f"hydra-optuna-sweeper {EXTRA}")
submitit_plugin = pytest.mark.skipif(not installed("hydra_plugins.hydra_submitit_launcher"),
                                     reason=f"hydra-submitit-launcher {EXTRA}")


def train(cwd: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, TRAIN, *overrides], capture_output=True, text=True, cwd=cwd,
                         timeout=600, **kwargs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def table(root: Path) -> list[dict[str, str]]:
    """The rows scripts/collect.py writes for the runs under ``root``, as its CSV has them."""
    assert collect.main([str(root), "--out", str(root / "table.csv")]) == 0
    with (root / "table.csv").open() as fh:
        return list(csv.DictReader(fh))


# ---- the search files -------------------------------------------------------------------

def search_space(params: dict) -> tuple[dict, dict]:
    """The Optuna distributions and the fixed values of a search's params (as the sweeper reads them)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    return create_params_from_overrides([f"{k}={v}" for k, v in params.items()])


def named_values(distribution) -> list:
    """Every choice of a categorical distribution, else the ends of its range."""
    return list(distribution.choices) if hasattr(distribution, "choices") else [distribution.low, distribution.high]


def check_search(overrides: list[str], extra_params: dict | None = None) -> int:
    """Compose the search of ``overrides`` (plus ``extra_params`` in its params); raise unless it
    is an Optuna study in the direction of trainer.goal whose every named value, each in turn (the
    others at their first), composes into a run where it lands and that builds. A grid must run
    each of its points once. Return the number of runs built."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.hydra.sweeper.direction == cfg.trainer.goal   # maximize accuracy, minimize KL ...
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        space, fixed = search_space({**cfg.hydra.sweeper.params, **(extra_params or {})})
        values = {name: named_values(d) for name, d in space.items()} | {name: [v] for name, v in fixed.items()}
        if cfg.hydra.sweeper.sampler._target_.endswith("GridSampler"):
            assert cfg.hydra.sweeper.n_trials == math.prod(len(vs) for vs in values.values())
        first = {name: vs[0] for name, vs in values.items()}
        points = [{**first, name: v} for name, vs in values.items() for v in vs]
        for point in points:
            run = compose("train", overrides=[f"{k}={v}" for k, v in point.items()], return_hydra_config=True)
            for key, value in point.items():
                landed = run.hydra.runtime.choices[key] if (CONFIGS / key).is_dir() else OmegaConf.select(run, key)
                assert str(landed) == str(value), f"{key}={value} composed as {landed}"
            with open_dict(run):
                del run["hydra"]
            build(OmegaConf.to_container(run, resolve=True))
    return len(points)


def test_every_search_mirrors_a_wandb_sweep():
    assert {"ep_beta_lr", "ep_bayes", "settle_tol", "rules", "ep_variants"} <= {p.stem for p in SEARCHES}
    assert {p.stem for p in SEARCHES} <= {p.stem for p in (CONFIGS / "sweep").glob("*.yaml")}


@optuna_plugin
@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.stem)
def test_every_search_composes_and_its_points_build(path):
    assert check_search([f"+search={path.stem}"]) >= 2


@optuna_plugin
@pytest.mark.parametrize("evaluate,direction", [("accuracy", "maximize"), ("likelihood", "minimize")])
def test_a_search_optimises_in_the_direction_of_the_goal(evaluate, direction):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        for path in SEARCHES:
            cfg = compose("train", overrides=[f"+search={path.stem}", f"evaluate={evaluate}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.direction == direction


@optuna_plugin
@pytest.mark.parametrize("bad,message", [
    ({"rule.betta": "interval(0.1, 1)"}, "betta"),                            # a key train.yaml lacks
    ({"rule.variant": "choice(centered, sideways)"}, "unknown EP variant"),   # a value the rule rejects
    ({"settle": "choice(fast, runge)"}, "settle/runge"),                      # a config that does not exist
    ({"optimizer.lr": "interval(0.1, 1)", "trainer.batch_size": "choice(16, 32)"}, "n_trials"),   # grid size
])
def test_a_bad_search_fails_the_check(bad, message):
    search = "rules" if "trainer.batch_size" in bad else "ep_beta_lr"
    with pytest.raises(Exception, match=message):
        check_search([f"+search={search}"], bad)


@optuna_plugin
def test_a_search_against_the_goal_fails_the_check():
    with pytest.raises(AssertionError, match="minimize"):
        check_search(["+search=ep_beta_lr", "hydra.sweeper.direction=minimize"])


# ---- Optuna -----------------------------------------------------------------------------

@optuna_plugin
def test_an_optuna_search_marks_its_best_trial_by_validation_accuracy(tmp_path):
    sweep = tmp_path / "search"
    train(tmp_path, "+search=ep_beta_lr", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}", *TINY)
    rows = table(sweep)
    assert [r["status"] for r in rows] == ["done"] * 3 and len({r["rule.beta"] for r in rows}) == 3
    best = [r for r in rows if r["best"] == "yes"]
    assert len(best) == 1 and float(best[0]["val_accuracy"]) == max(float(r["val_accuracy"]) for r in rows)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == float(best[0]["val_accuracy"])   # the objective: validation, not test
    assert results["best_params"] == {k: float(best[0][k]) for k in ("rule.beta", "optimizer.lr")}


@pytest.mark.slow   # ~11 s here; keeps the file's default run near a minute
@optuna_plugin
def test_a_killed_search_continues_from_its_sqlite_storage(tmp_path):
    import optuna
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = ["+search=ep_beta_lr", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s", *TINY]
    first = subprocess.Popen([sys.executable, TRAIN, *search, "hydra.sweeper.n_trials=5",
                              f"hydra.sweep.dir={tmp_path / 'first'}"], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "first" / "1" / ".hydra", first)   # trial 0 done and told, trial 1 running
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done = [t for t in optuna.load_study(study_name="s", storage=storage).trials if t.state.name == "COMPLETE"]
    assert 1 <= len(done) < 5
    train(tmp_path, *search, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'second'}")
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.number for t in trials if t.state.name == "RUNNING"] == [len(done)]   # the one killed
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    summary = lambda ts: [(t.number, t.params, t.value) for t in ts]
    assert len(complete) == len(done) + 1 and summary(complete[:len(done)]) == summary(done)   # kept
    results = yaml.safe_load((tmp_path / "second" / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(t.value for t in complete)   # best of the whole study
    rows = [r for r in table(tmp_path) if r["status"] == "done"]     # both sweep dirs
    assert [r["run"] for r in rows if r["best"] == "yes"] == \
        [max(rows, key=lambda r: float(r["val_accuracy"]))["run"]]


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    while not path.exists():
        assert proc.poll() is None, f"exited ({proc.returncode}) before writing {path}"
        time.sleep(0.02)


# ---- submitit ---------------------------------------------------------------------------

@submitit_plugin
def test_a_submitit_multirun_runs_each_point_as_a_job_in_one_wandb_group(tmp_path):
    sweep = tmp_path / "multirun"
    wandb = ["logger=wandb", "logger.wandb.mode=disabled"]   # the group reaches the logger's arguments
    train(tmp_path, "-m", "hydra/launcher=submitit_local", "rule.beta=0.1,0.5", f"hydra.sweep.dir={sweep}",
          *[o for o in TINY if not o.startswith("logger=")], *wandb)
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "1", "multirun.yaml"]
    assert len(list((sweep / ".submitit").iterdir())) >= 2   # a job folder each (and submitit's %j)
    rows = table(sweep)
    assert [(r["run"], r["rule.beta"], r["status"]) for r in rows] == [("0", "0.1", "done"), ("1", "0.5", "done")]
    for row in rows:
        run = sweep / row["run"]
        assert float(row["val_accuracy"]) == json.loads((run / "summary.json").read_text())["val_accuracy"]
        config = torch.load(run / "checkpoint.pt", weights_only=True)["config"]
        assert config["logger"]["wandb"]["group"] == str(sweep)


# Long enough (6 epochs) that a kill after the first checkpoint is mid-run (as tests/test_resume.py).
JOB = ["-m", "hydra/launcher=local", "resume=true", "model.sizes.1=32", "settle=fast", "logger=none",
       "trainer.epochs=6", "rule.allow_unconverged=true"]   # settle=fast leaves a rare −β sample unsettled


def records(run_dir: Path):
    """The summary and per-epoch metrics without their times, and the final weights."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in [k for k in line if k.endswith("_time_s")]:   # epoch, settle and optimizer times
            line.pop(key)
    return summary, lines, torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The records of the job of JOB, run through to the end."""
    sweep = tmp_path_factory.mktemp("whole")
    train(sweep, *JOB, f"hydra.sweep.dir={sweep}")
    return records(sweep / "0")


def check_resumed(run_dir: Path, killed_at: int, uninterrupted) -> None:
    assert f"after epoch {killed_at}" in (run_dir / "train.log").read_text()
    (summary, lines, weights), (summary0, lines0, weights0) = records(run_dir), uninterrupted
    assert (summary, lines) == (summary0, lines0)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]   # no epoch logged twice
    assert weights.keys() == weights0.keys() and all(torch.equal(weights[k], weights0[k]) for k in weights)


@pytest.mark.slow   # ~46 s here (two runs, one killed); test_resume.py kills and resumes a run by default
@submitit_plugin
def test_a_killed_job_resubmitted_with_resume_ends_as_the_uninterrupted_one(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, TRAIN, *JOB, f"hydra.sweep.dir={killed}"], cwd=tmp_path,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(killed / "0" / "checkpoint.pt", job)
    os.killpg(job.pid, signal.SIGKILL)   # the launcher and its job
    job.wait()
    killed_at = torch.load(killed / "0" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 6 and not (killed / "0" / "summary.json").exists()
    train(tmp_path, *JOB, f"hydra.sweep.dir={killed}")   # resubmitted: the same command
    check_resumed(killed / "0", killed_at, uninterrupted)


# A stand-in for SLURM on this machine: sbatch runs the script (each task of an array) in the
# background, srun runs its command as the one task, scontrol requeue runs a job again once its
# attempt has ended, sacct knows nothing (submitit then waits for the job's result file).
FAKE_SLURM = {
    "sbatch": """#!{python}
import os, re, subprocess, sys
from pathlib import Path
state, script = Path(os.environ["FAKE_SLURM"]), Path(sys.argv[-1])
array = re.search(r"#SBATCH --array=0-(\\d+)", script.read_text())
job = 100 + len(list(state.glob("*.job")))
(state / f"{{job}}.job").write_text(str(script))
for jid in [f"{{job}}_{{task}}" for task in range(int(array.group(1)) + 1)] if array else [str(job)]:
    subprocess.Popen([str(Path(__file__).parent / "fake_run"), jid], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {{job}}")
""",
    "fake_run": """#!{python}
import os, subprocess, sys, time
from pathlib import Path
state, jid = Path(os.environ["FAKE_SLURM"]), sys.argv[1]
job, _, task = jid.partition("_")
pid = state / f"{{jid}}.pid"
while pid.exists() and Path(f"/proc/{{pid.read_text().strip()}}").exists():   # the attempt before
    time.sleep(0.05)
time.sleep(1)   # submitit moves the job's pickle into place after sbatch returns
env = dict(os.environ, FAKE_JID=jid, SLURM_JOB_ID=job)
if task:
    env.update(SLURM_JOB_ID=str(10 * int(job) + int(task)), SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=task)
subprocess.run(["bash", (state / f"{{job}}.job").read_text()], env=env)
""",
    "srun": """#!/bin/sh
echo $$ > "$FAKE_SLURM/$FAKE_JID.pid"
name() {{ echo "$1" | sed "s/%A/$SLURM_ARRAY_JOB_ID/g; s/%a/$SLURM_ARRAY_TASK_ID/g; s/%j/$SLURM_JOB_ID/g; s/%t/0/g"; }}
out=$(name "$3"); err=$(name "$5"); shift 5   # --unbuffered --output X --error X
mkdir -p "$(dirname "$out")"
exec env SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 \\
    SLURM_JOB_NODELIST=localhost "$@" >>"$out" 2>>"$err"
""",
    "scontrol": """#!{python}
import subprocess, sys
from pathlib import Path
assert sys.argv[1] == "requeue", sys.argv
subprocess.Popen([str(Path(__file__).parent / "fake_run"), sys.argv[2]], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
""",
    "sacct": "#!/bin/sh\necho 'JobID|State|NodeList'\n",
}


@pytest.fixture
def fake_slurm(tmp_path):
    """The environment of a command that submits to the stand-in SLURM; its state folder."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SLURM=str(state)), state


@pytest.mark.slow   # ~14 s here
@submitit_plugin
def test_a_preempted_slurm_job_is_requeued_and_resumes_to_the_uninterrupted_result(tmp_path, fake_slurm,
                                                                                   uninterrupted):
    env, state = fake_slurm
    sweep = tmp_path / "multirun"
    job = [o.replace("hydra/launcher=local", "hydra/launcher=slurm") for o in JOB]
    with tempfile.TemporaryFile("w+") as log:   # a file, not a pipe that could fill and block the child
        launcher = subprocess.Popen([sys.executable, TRAIN, *job, f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                                    env=env, stdout=log, stderr=log, text=True)
        wait_for(sweep / "0" / "checkpoint.pt", launcher)
        os.kill(int((state / "100.pid").read_text()), signal.SIGUSR2)   # SLURM's notice of preemption
        assert launcher.wait(timeout=600) == 0, log.seek(0) or log.read()[-3000:]
    killed_at = int(re.search(r"resuming .* after epoch (\d+)", (sweep / "0" / "train.log").read_text())[1])
    assert 1 <= killed_at < 6
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit" / "100").glob("100_0_log.*"))
    assert "this job is preempted" in submitit_log and "Requeued job 100" in submitit_log
    check_resumed(sweep / "0", killed_at, uninterrupted)


@submitit_plugin
def test_the_slurm_launcher_writes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """The launcher's parameters, as hydra-submitit-launcher hands them to submitit (its launch()),
    are all valid submitit options, and give the sbatch header the config promises."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")   # submitit refuses to start without srun
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}",
                                          "hydra.job.name=train"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k != "_target_"})
    script = executor._executor._make_submission_file_text("python -u job.py", "uid")
    for line in ["--gpus-per-node=1", "--cpus-per-task=4", "--time=240", "--mem=32GB", "--signal=USR2@120"]:
        assert f"#SBATCH {line}\n" in script
    assert "--partition" not in script   # the cluster's default, until the user names one


# ---- wandb groups -----------------------------------------------------------------------

def test_wandb_group_is_set_unless_the_config_names_one():
    loggers = {"console": {}, "wandb": {"project": "dynets"}}
    assert wandb_group(loggers, "multirun/a")["wandb"] == {"project": "dynets", "group": "multirun/a"}
    assert loggers["wandb"] == {"project": "dynets"}   # not modified
    assert wandb_group({"wandb": {"group": "mine"}}, "multirun/a") == {"wandb": {"group": "mine"}}
    assert wandb_group({"wandb": {"group": None}}, "multirun/a") == {"wandb": {"group": None}}
    assert wandb_group({"console": {}}, "multirun/a") == {"console": {}}


# ---- without the plugins ----------------------------------------------------------------

@pytest.fixture(scope="module")
def train_script():
    """scripts/train.py as a module (its main guarded by ``__name__``)."""
    spec = importlib.util.spec_from_file_location("train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hide_plugins(monkeypatch) -> None:
    """Make the plugin modules unfindable, as where the extra is not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_") else find_spec(name, *a))


@pytest.mark.parametrize("override,plugin", [
    ("hydra/sweeper=optuna", "hydra-optuna-sweeper"),
    ("+search=ep_beta_lr", "hydra-optuna-sweeper"),
    ("hydra/launcher=submitit_slurm", "hydra-submitit-launcher"),
    ("hydra/launcher=slurm", "hydra-submitit-launcher"),
    ("hydra/launcher=submitit_local", "hydra-submitit-launcher"),
    ("hydra/launcher=local", "hydra-submitit-launcher"),
])
def test_without_the_plugins_selecting_one_names_the_extra(train_script, monkeypatch, override, plugin):
    hide_plugins(monkeypatch)
    with pytest.raises(SystemExit, match=re.escape(f'{override} needs the hydra plugin {plugin}, which is not '
                                                   'installed: pip install -e ".[cluster]"')):
        train_script.check_plugins(["-m", "rule.beta=0.1,0.5", override])
    train_script.check_plugins(["-m", "rule.beta=0.1,0.5", "hydra/sweeper=basic", "hydra/launcher=basic"])


def test_without_the_plugins_the_script_exits_naming_the_extra(tmp_path):
    without = ("import importlib.util, runpy, sys; find_spec = importlib.util.find_spec; "
               "importlib.util.find_spec = lambda n, *a: None if n.startswith('hydra_plugins.hydra_') "
               "else find_spec(n, *a); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", without, TRAIN, "-m", "hydra/sweeper=optuna", *TINY],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1 and 'pip install -e ".[cluster]"' in out.stderr, out.stderr
    assert not (tmp_path / "multirun").exists()   # stopped before hydra ran anything

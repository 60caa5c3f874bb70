"""Checkpoints and resume: a killed run continues to exactly the end of an uninterrupted one;
checkpoints load without pickled code; a bad checkpoint or another model fails clearly."""
import functools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from dynets import SettleOptions

from dynets.app.run import checkpoint
from dynets.app.run import resume_from
from dynets.data import Dataset, Split
from dynets.models import LayeredHopfield
from dynets.app.options import ConfigError
from dynets.rules import EquilibriumPropagation
from dynets.rules.base import Rule
from dynets.app.fit import fit

ROOT = Path(__file__).resolve().parents[1]

# Small and fast, and long enough (3 epochs) that a kill after the first checkpoint is mid-run.
EPOCHS = 3
RUN = ["model.sizes.1=32", "settle=fast", "logger=none", f"trainer.epochs={EPOCHS}", "rule.allow_unconverged=true"]
# One thread per child: the uninterrupted and the killed run go at once, and two processes of two
# threads on a 2-core machine slow each other down many times over.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# A child that burns this much CPU without finishing an epoch, or gets no CPU at all for this
# long, is stuck. Neither fires on a busy machine where the child is slow but running.
STUCK_CPU_S, STUCK_IDLE_S = 300.0, 900.0


class App:
    """``scripts/train.py`` in a subprocess, its output going to a file (a pipe that nobody
    reads until the end could fill up and block the child)."""

    def __init__(self, run_dir: Path, *overrides: str) -> None:
        self.run_dir, self.output = run_dir, tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *RUN, *overrides],
                                     cwd=run_dir.parent, stdout=self.output, stderr=subprocess.STDOUT, text=True,
                                     env=CHILD_ENV)

    def text(self) -> str:
        self.output.seek(0)
        return self.output.read()

    def wait(self) -> tuple[int, str]:
        """The exit code and output, once the child exits. No wall-clock limit: it fails the
        test only when the child is stuck (see STUCK_CPU_S), after killing it."""
        cpu_at_epoch, last_cpu, last_change, epochs = 0.0, -1.0, time.monotonic(), -1
        while self.proc.poll() is None:
            cpu, done = cpu_seconds(self.proc.pid), self.epochs()
            if done > epochs:
                epochs, cpu_at_epoch = done, cpu
            if cpu > last_cpu:
                last_cpu, last_change = cpu, time.monotonic()
            if cpu - cpu_at_epoch > STUCK_CPU_S or time.monotonic() - last_change > STUCK_IDLE_S:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"train.py is stuck after epoch {epochs} ({cpu:.0f} CPU seconds):\n{self.text()}")
            time.sleep(0.1)
        return self.proc.returncode, self.text()

    def finish(self) -> str:
        code, output = self.wait()
        assert code == 0, output
        return output

    def epochs(self) -> int:
        path = self.run_dir / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def kill_after_first_checkpoint(self) -> None:
        while not (self.run_dir / "checkpoint.pt").exists():
            assert self.proc.poll() is None, self.text()
            time.sleep(0.02)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process (0 once it has exited), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()   # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run SIGKILLed after its first checkpoint and resumed."""
    whole, killed = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("killed")
    reference = App(whole, f"hydra.run.dir={whole}")
    App(killed, f"hydra.run.dir={killed}").kill_after_first_checkpoint()
    killed_at = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    output = App(killed, f"resume={killed}").finish()
    reference.finish()
    return whole, killed, killed_at, output


def records(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in [k for k in line if k.endswith("_time_s")]:   # epoch, settle and optimizer times
            line.pop(key)
    return summary, lines


def test_killed_run_resumes_to_the_uninterrupted_result(runs):
    whole, killed, killed_at, output = runs
    assert 1 <= killed_at < EPOCHS
    assert f"after epoch {killed_at}" in output
    summary, lines = records(killed)
    assert (summary, lines) == records(whole)
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))   # no epoch logged twice
    assert "batches" not in output   # no progress bar off a terminal


def test_resume_with_another_model_names_the_difference(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs[1], run_dir)
    code, output = App(run_dir, f"hydra.run.dir={run_dir}", "resume=true", "model.sizes.1=16").wait()
    assert code != 0
    assert "different model (model.sizes: [64, 32, 10] -> [64, 16, 10])" in output


def test_resume_without_a_checkpoint(tmp_path, caplog):
    with pytest.raises(ConfigError, match="no checkpoint.pt there"):   # resume=<dir> names a run
        resume_from({"resume": str(tmp_path)}, tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')   # an epoch killed before its checkpoint
    with caplog.at_level(logging.WARNING, logger="dynets"):      # resume=true: a requeued job starts
        assert resume_from({"resume": True}, tmp_path) is None
    assert "starting at epoch 1" in caplog.text
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def tiny_data(n=96, features=6, classes=3):
    """Random float64 data with labels from a fixed linear map: learnable, and small."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, features, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(features, classes, generator=g, dtype=torch.float64)).argmax(1)
    split = lambda a, b: Split(x[a:b], y[a:b])
    return Dataset("tiny", split(0, 64), split(64, 80), split(80, 96), features, classes)


TINY_SETTLE = SettleOptions(method="fast_euler", atol=1e-6, max_time=20)


def tiny_run(run_dir=None, epochs=3, init_seed=0, rule=None, device="cpu", **kwargs):
    torch.manual_seed(init_seed)
    model = LayeredHopfield([6, 8, 3]).double().to(device)
    rule = rule or EquilibriumPropagation(0.5, settle=TINY_SETTLE, allow_unconverged=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    summary = fit(model, rule, tiny_data().to(device), optimizer, epochs=epochs, batch_size=10, seed=3,
                  run_dir=run_dir, **kwargs)
    summary.pop("wall_time_s")
    return summary, model


def test_fit_resumed_from_a_checkpoint_equals_the_uninterrupted_fit(tmp_path):
    tiny_run(tmp_path, epochs=2)
    # Another init seed: the resumed weights must all come from the checkpoint.
    resumed, model = tiny_run(tmp_path, epochs=4, init_seed=9, resume_from=tmp_path)
    whole, reference = tiny_run(epochs=4)
    assert resumed == whole
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_resume_keeps_the_selection_of_its_checkpoint(tmp_path):
    tiny_run(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="selected the best epoch by maximize val_accuracy, and this run by "
                                         "minimize val_steps"):
        tiny_run(tmp_path, epochs=2, resume_from=tmp_path, select="val_steps", goal="minimize")


class RandomBeta(Rule):
    """EP with β drawn for every batch: a stochastic rule. It draws from its own generator,
    or with ``device="cuda"`` from torch's global CUDA generator."""

    def __init__(self, seed: int, device: str = "cpu") -> None:
        super().__init__(TINY_SETTLE)
        self.device = device
        if device == "cpu":
            self.generator = torch.Generator().manual_seed(seed)

    def update(self, model, x, y=None):
        u = torch.rand((), generator=self.generator) if self.device == "cpu" else torch.rand((), device=self.device)
        return EquilibriumPropagation(0.1 + u.item(), settle=self.settle, allow_unconverged=True).update(model, x, y)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_stochastic_rule_resumes_to_the_uninterrupted_result(tmp_path, device):
    run = functools.partial(tiny_run, epochs=4, device=device)
    run(tmp_path, epochs=2, rule=RandomBeta(4, device))
    # A rule built anew, as a restarted process builds it: its draws must come from the checkpoint.
    resumed, model = run(tmp_path, init_seed=9, resume_from=tmp_path, rule=RandomBeta(4, device))
    whole, reference = run(rule=RandomBeta(4, device))
    assert resumed == whole
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_loads_weights_only_and_holds_the_run_state(tmp_path):
    summary, model = tiny_run(tmp_path, epochs=3, config={"model": {"sizes": [64, 8, 10]}})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["config"] == {"model": {"sizes": [64, 8, 10]}}
    # The batch order of 3 epochs of 64 samples: three permutations drawn from seed 3.
    order = torch.Generator().manual_seed(3)
    for _ in range(3):
        torch.randperm(64, generator=order)
    assert torch.equal(state["rng"]["generators"]["batch_order"][0], order.get_state())
    best = state["history"]
    assert (best["best_epoch"], best["best_value"]) == (summary["best_epoch"], summary["val_accuracy"])
    for name, p in model.named_parameters():   # fit ends with the best epoch's weights
        assert torch.equal(best["best_model"][name], p)
    assert checkpoint.read(tmp_path / checkpoint.PREVIOUS)["epoch"] == 2   # the one before is kept


def test_truncated_checkpoint_falls_back_then_fails_clearly(tmp_path, caplog):
    checkpoint.save({"epoch": 1}, tmp_path)
    checkpoint.save({"epoch": 2}, tmp_path)
    latest = tmp_path / checkpoint.CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="dynets"):
        assert checkpoint.load(tmp_path)["epoch"] == 1
    assert f"cannot read checkpoint {latest}: it is truncated or corrupt" in caplog.text
    previous = tmp_path / checkpoint.PREVIOUS
    previous.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match=f"{previous}.*start the run again without resume"):
        checkpoint.load(tmp_path)
    assert checkpoint.load(tmp_path / "empty") is None


class Payload:
    """Any class: unpickling it would run code of the file's choosing."""


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "epoch": 1, "payload": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.pt: it is truncated or corrupt"):
        checkpoint.read(tmp_path / "checkpoint.pt")


def test_resume_into_another_model_lists_the_shapes(tmp_path):
    saved = checkpoint.model_signature(LayeredHopfield([6, 8, 3]))
    with pytest.raises(checkpoint.CheckpointError, match=r"layers.0.weight shape \[8, 6\] vs \[5, 6\]"):
        checkpoint.check_model(saved, LayeredHopfield([6, 5, 3]), "run/checkpoint.pt")
    checkpoint.check_model(saved, LayeredHopfield([6, 8, 3]), "run/checkpoint.pt")


def test_truncate_metrics_keeps_the_epochs_of_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": e, "loss": 1.0 / e}) + "\n" for e in (1, 2, 3)) + '{"epoch": 4, "lo')
    assert checkpoint.truncate_metrics(path, 2) == 2
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]
    path.write_text(path.read_text() + '{"epoch": 3, "lo')   # a half-written line after the kept ones
    assert checkpoint.truncate_metrics(path, 5) == 2
    assert checkpoint.truncate_metrics(tmp_path / "none.jsonl", 1) == 0 and not (tmp_path / "none.jsonl").exists()


class Rates:
    """A logger keeping the learning rate of every epoch."""

    def __init__(self) -> None:
        self.rates = []

    def log(self, metrics, step):
        self.rates.append(metrics["lr"])


def test_a_learning_rate_schedule_follows_its_formula_and_resumes(tmp_path):
    def run(run_dir=None, epochs=4, init_seed=0, **kwargs):
        torch.manual_seed(init_seed)
        model = LayeredHopfield([6, 8, 3]).double()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        schedule, rates = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4), Rates()
        summary = fit(model, EquilibriumPropagation(0.5, settle=TINY_SETTLE, allow_unconverged=True), tiny_data(), optimizer, epochs=epochs,
                      batch_size=10, seed=3, run_dir=run_dir, scheduler=schedule, loggers=[rates], **kwargs)
        summary.pop("wall_time_s")
        return summary, model, rates.rates

    whole, reference, rates = run()
    # lr_e = ½·lr₀·(1 + cos(π e / T)) for epoch e = 0..T−1 (Loshchilov & Hutter 2017, eta_min = 0)
    assert rates == pytest.approx([0.025 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    run(tmp_path, epochs=2)
    resumed, model, later = run(tmp_path, init_seed=9, resume_from=tmp_path)
    assert resumed == whole and later == rates[2:]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    with pytest.raises(checkpoint.CheckpointError, match="learning-rate schedule"):
        tiny_run(tmp_path, epochs=4, resume_from=tmp_path)


# HebbianSleep's stop rule carries state from call to call (calls, best, stale): a memory run
# SIGKILLed mid-sleep, before the stop rule has stopped, must resume to the uninterrupted end.
MEMORY_EPOCHS, MEMORY_STALL = 12, 4   # the child stalls in epoch 4's log: its checkpoint is epoch 3's

CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_resume import memory_run

class Stall:
    def log(self, metrics, step):
        if step == {stall}:
            open({marker!r}, "w").close()
            time.sleep(3600)

memory_run({run_dir!r}, {epochs}, loggers=[Stall()])
"""


def memory_run(run_dir, epochs, resume=False, loggers=()):
    """N = 64 units holding 16 patterns (α = 0.25) by Hebbian storage, then one HebbianSleep call
    per epoch (monitored every second call) with SGD at ε = 3e-4; its summary and last checkpoint."""
    from dynets.data import patterns
    from dynets.models.memory import AssociativeMemory
    from dynets.rules import HebbianSleep, HebbianStorage, write_grads
    from dynets.rules.memory import RecallMonitor
    xi = patterns(16, 64, seed=0)
    data = Dataset("patterns", *(Split(xi, torch.zeros(16, dtype=torch.long)) for _ in range(3)), 64, 1)
    model = AssociativeMemory(64)
    write_grads(model, HebbianStorage().update(model, xi).grads)
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    rule = HebbianSleep(dreams=20, monitor_every=2, patience=3, seed=0)
    summary = fit(model, rule, data, torch.optim.SGD(model.parameters(), lr=3e-4), epochs=epochs, batch_size=16,
                  evaluate=lambda m, split: RecallMonitor()(m, split.x), select="val_overlap", run_dir=run_dir,
                  resume_from=run_dir if resume else None, loggers=loggers)
    summary.pop("wall_time_s")
    return summary, checkpoint.load(run_dir)


def test_a_memory_killed_mid_sleep_resumes_its_stop_rule_bit_identically(tmp_path):
    """Killed (SIGKILL) after epoch 3's checkpoint, the stop rule not yet stopped, and resumed with a
    rule built anew: weights, stop rule and summary as the uninterrupted run's (losing the stop
    rule's state measures at other calls against another best: another end)."""
    killed, marker = tmp_path / "killed", tmp_path / "stalled"
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(
            tests=str(ROOT / "tests"), stall=MEMORY_STALL, marker=str(marker), run_dir=str(killed),
            epochs=MEMORY_EPOCHS)], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
        while not marker.exists():
            if child.poll() is not None:
                output.seek(0)
                pytest.fail(f"the child exited before stalling:\n{output.read()}")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    saved = checkpoint.load(killed)
    assert saved["epoch"] == MEMORY_STALL - 1 and saved["rule"]["stopped"] is None and saved["rule"]["calls"] == 3
    resumed, end = memory_run(killed, MEMORY_EPOCHS, resume=True)
    whole, reference = memory_run(tmp_path / "whole", MEMORY_EPOCHS)
    assert reference["rule"]["stopped"] is not None   # the stop rule acted after the kill
    assert resumed == whole and end["rule"] == reference["rule"]
    assert torch.equal(end["model"]["weight"], reference["model"]["weight"])

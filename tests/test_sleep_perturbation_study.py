"""The sleep-perturbation study (dynets.studies.sleep_perturbation, scripts/sleep_perturbation.py,
configs/sleep_perturbation.yaml): its bookkeeping against hand counts, its targets against hand
arithmetic, and every method of its config built with hydra."""
import importlib.util
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import dynets
from dynets.models import Helmholtz
from dynets.rules import (RecognitionExact, RecognitionNodePerturbation, RecognitionWeightPerturbation,
                          SleepInterleaved, WakeSleep)
from dynets.studies.sleep_perturbation import checkpoints, first_reach, targets, train

ROOT = Path(__file__).resolve().parents[1]


def script():
    spec = importlib.util.spec_from_file_location("sleep_perturbation_script", ROOT / "scripts" / "sleep_perturbation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_of_the_config_builds_its_learners_with_the_seed():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("sleep_perturbation")
    build, kinds = script().build, {"np": RecognitionNodePerturbation, "wp": RecognitionWeightPerturbation,
                                    "exact": RecognitionExact}
    assert list(cfg.task_names) == list(cfg.tasks)
    for task in cfg.tasks.values():
        methods = OmegaConf.to_container(task.methods, resolve=True)
        assert {"ws", "np_sleep", "wp_sleep", "np_wake", "exact_wake"} <= set(methods)
        for name, method in methods.items():
            kind = next(k for k in kinds if name.startswith(k)) if name != "ws" else None
            role = "sleep_learner" if "sleep" in name else "wake_learner"
            learner = build(method.get(role), 7)
            assert (learner is None) == (kind is None) and (kind is None or type(learner) is kinds[kind]), name
            if hasattr(learner, "generator"):   # seeded: the same seed, the same stream
                assert torch.equal(learner.generator.get_state(), torch.Generator().manual_seed(7).get_state())
            SleepInterleaved(WakeSleep(), ratio=method["ratio"], **{role: learner}).check_model(Helmholtz(list(task.sizes)))


def test_checkpoints_start_at_zero_and_end_at_the_last_step():
    marks = checkpoints(6400)
    assert marks[0] == 0 and marks[1] == 100 and marks[-1] == 6400 and marks == sorted(set(marks))


def test_training_counts_data_samples_and_sleep_steps_and_takes_plain_sgd_steps():
    data = dynets.data.bars(n_train=64, n_val=16, n_test=16)
    model, twin = Helmholtz([16, 4, 1], seed=0), Helmholtz([16, 4, 1], seed=0)
    rows = train(model, SleepInterleaved(WakeSleep(seed=0), ratio=1.5, seed=0), data, "bars", steps=8, batch_size=4,
                 lr=0.3, seed=5)
    assert [r["data_samples"] for r in rows] == [4 * r["step"] for r in rows]
    assert [r["sleep_steps"] for r in rows] == [int(1.5 * r["step"]) for r in rows]
    assert rows[0]["value"] == dynets.likelihood.kl_bits(twin, data.distribution)
    # the same batches and rule by hand: θ ← θ − lr·g
    rule, g = SleepInterleaved(WakeSleep(seed=0), ratio=1.5, seed=0), torch.Generator().manual_seed(5)
    for _ in range(8):
        grads = rule.update(twin, data.train.x[torch.randint(64, (4,), generator=g)]).grads
        with torch.no_grad():
            for name, p in twin.named_parameters():
                p.sub_(0.3 * grads[name])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def rows_of(task, method, xs, values, key):
    return [dict(task=task, method=method, seed=s, step=i, **{key: x}, value=v + 0.01 * s)
            for s in (0, 1, 2) for i, (x, v) in enumerate(zip(xs, values))]


def test_first_reach_interpolates_between_checkpoints():
    rows = rows_of("bars", "a", [0, 100, 200], [9.0, 5.0, 3.0], "sleep_steps")   # mean values 9.01, 5.01, 3.01
    better = lambda v, level: v <= level
    assert first_reach(rows, "bars", "a", "sleep_steps", 4.01, better) == pytest.approx(150.0)
    assert first_reach(rows, "bars", "a", "sleep_steps", 2.0, better) != first_reach(rows, "bars", "a", "sleep_steps", 2.0, better)


def test_the_targets_are_the_ratios_of_the_crossings():
    rows = rows_of("bars", "ws", [0, 100, 200], [9.0, 5.0, 3.0], "sleep_steps")
    rows += rows_of("bars", "np_sleep", [0, 200, 300], [9.0, 4.0, 2.0], "sleep_steps")   # 3.01 at 250
    rows += rows_of("digits", "np_sleep", [0, 10, 20], [0.5, 0.7, 0.9], "data_samples")   # 0.81 at 15
    rows += rows_of("digits", "np_wake", [0, 100, 400], [0.5, 0.6, 0.8], "data_samples")   # 0.81 at 400
    bars, digits = targets(rows)
    assert "after 250 sleep steps (1.25x" in bars
    assert "probe accuracy 0.810 (" in digits and "np_sleep 15 data samples and np_wake 400: 26.67x fewer" in digits

"""What an epoch costs and what the end-of-run summary settles: the app's per-epoch settle and
optimizer times (sections of a clock, summed), and the summary's seeded sample of the training split."""
import pytest
import torch

import dynets
from dynets import SettleOptions
from dynets.app.fit import fit, free_phase_metrics, train_step
from dynets.app.history import train_sample
from dynets.app.stopwatch import Stopwatch
from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation

FAST = SettleOptions(method="fast_euler", atol=1e-3, max_time=40)


class Clock:
    """A clock that moves only when the code under test says its work took time."""

    def __init__(self):
        self.now, self.syncs = 0.0, 0

    def __call__(self):
        return self.now

    def sync(self):
        self.syncs += 1


def test_the_stopwatch_sums_each_section_and_syncs_at_every_reading():
    clock = Clock()
    watch = Stopwatch(clock.sync, clock)
    for settle, step in ((3.0, 0.5), (1.0, 0.25)):
        with watch.section("settle_time_s"):
            clock.now += settle
        clock.now += 100.0   # outside any section: counted nowhere
        with watch.section("optimizer_time_s"):
            clock.now += step
    assert watch.read() == {"settle_time_s": 4.0, "optimizer_time_s": 0.75}
    assert clock.syncs == 8   # before each of the 2 readings of 4 sections
    assert watch.read() == {"settle_time_s": 0.0, "optimizer_time_s": 0.0}   # read resets


def test_a_train_step_times_the_rules_update_as_settling_and_the_step_as_the_optimizers():
    """The rule's update takes 3 s of the fake clock and the optimizer step 2 s: each lands in its section."""
    torch.manual_seed(0)
    model, clock = LayeredHopfield([4, 3, 2]), Clock()
    rule = EquilibriumPropagation(0.5, settle=FAST, allow_unconverged=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    update, step = rule.update, optimizer.step
    rule.update = lambda *a: (setattr(clock, "now", clock.now + 3.0), update(*a))[1]
    optimizer.step = lambda: (setattr(clock, "now", clock.now + 2.0), step())[1]
    watch = Stopwatch(clock=clock)
    train_step(model, rule, optimizer, torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 1]), watch)
    assert watch.read() == {"settle_time_s": 3.0, "optimizer_time_s": 2.0}


@pytest.fixture(scope="module")
def small():
    digits = dynets.data.digits().flat()
    return dynets.data.from_arrays(digits.train.x[:200], digits.train.y[:200])


def run(data, rows, seed=0, loggers=()):
    """Two epochs; the splits the summary's evaluation was given, by call."""
    torch.manual_seed(seed)
    model, seen = LayeredHopfield([64, 8, 10]), []
    evaluate = lambda m, split: (seen.append(split), free_phase_metrics(m, split, FAST))[1]
    rule = EquilibriumPropagation(0.5, settle=FAST, allow_unconverged=True)
    summary = fit(model, rule, data, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=32, seed=seed,
                  evaluate=evaluate, loggers=loggers, summary_train_rows=rows)
    return summary, seen[-3:]   # after the two validations: train, val, test


def test_every_epoch_reports_its_settle_and_optimizer_time_within_its_own(small):
    class Recorder:
        epochs = []
        start = finish = lambda *a: None
        log = lambda self, metrics, step: self.epochs.append(metrics)
    run(small, 50, loggers=[recorder := Recorder()])
    assert len(recorder.epochs) == 2
    for m in recorder.epochs:   # nested intervals of one clock, not a speed
        assert 0 < m["settle_time_s"] and 0 < m["optimizer_time_s"]
        assert m["settle_time_s"] + m["optimizer_time_s"] <= m["epoch_time_s"]


def test_the_summary_evaluates_a_seeded_sample_of_the_training_split_and_all_of_val_and_test(small):
    _, (train, val, test) = run(small, 50)
    rows = {tuple(r.tolist()) for r in small.train.x}
    picked = [tuple(r.tolist()) for r in train.x]
    assert len(picked) == 50 and len(set(picked)) == 50 and set(picked) <= rows   # 50 distinct training rows
    assert torch.equal(val.x, small.val.x) and torch.equal(test.x, small.test.x)
    again = train_sample(small.train, 50, 0)
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)      # the same draw for the same seed
    assert not torch.equal(train_sample(small.train, 50, 1).x, train.x)
    _, (whole, _, _) = run(small, None)
    assert torch.equal(whole.x, small.train.x)


def test_a_bad_sample_size_is_an_error_before_training(small):
    with pytest.raises(ValueError, match="summary_train_rows must be >= 1 or None"):
        run(small, 0)

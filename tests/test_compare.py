"""The comparison table: its bp reference against an independent MLP, its statistics, its files."""
import csv
import functools
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

import dynets
from dynets import Condition, SettleOptions
from dynets.studies.compare import Entry, compare, markdown, summarise, write
from dynets.models import LayeredHopfield, PredictiveCoding
from dynets.rules import Backprop, EquilibriumPropagation, ImplicitDifferentiation


def test_backprop_on_pc_is_the_gradient_of_the_same_mlp():
    """bp's update equals autograd through an nn.Sequential MLP with the same weights, and
    implicit differentiation at PC's free equilibrium gives the same gradient."""
    torch.manual_seed(0)
    model = PredictiveCoding([6, 8, 5, 3], "tanh").double()
    x, y = torch.rand(7, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    for dst, src in zip([mlp[0], mlp[2], mlp[4]], model.layers):
        dst.load_state_dict(src.state_dict())
    loss = 0.5 * (mlp(x) - nn.functional.one_hot(y, 3).double()).pow(2).sum(1).mean()
    want = torch.autograd.grad(loss, list(mlp.parameters()))
    names = [name for name, _ in model.named_parameters()]
    grads = Backprop().update(model, x, y).grads
    for name, w in zip(names, want, strict=True):
        torch.testing.assert_close(grads[name], w, rtol=1e-12, atol=1e-14)
    grads = ImplicitDifferentiation(SettleOptions(method="fast_euler", step_size=0.2, atol=1e-12, max_time=100),
                                    adjoint_tol=1e-12, adjoint_max_steps=20000).update(model, x, y).grads
    for name, w in zip(names, want):
        torch.testing.assert_close(grads[name], w, rtol=1e-8, atol=1e-10)


def test_backprop_leaves_out_frozen_parameters():
    """A frozen first layer (fine-tuning the top): bp returns gradients for the trainable
    parameters only, each equal to autograd through the same MLP."""
    torch.manual_seed(1)
    model = PredictiveCoding([5, 4, 3], "tanh").double()
    model.layers[0].requires_grad_(False)
    x, y = torch.rand(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    mlp = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    for dst, src in zip([mlp[0], mlp[2]], model.layers):
        dst.load_state_dict(src.state_dict())
    loss = 0.5 * (mlp(x) - nn.functional.one_hot(y, 3).double()).pow(2).sum(1).mean()
    want = dict(zip(["layers.1.weight", "layers.1.bias"], torch.autograd.grad(loss, list(mlp[2].parameters()))))
    grads = Backprop().update(model, x, y).grads
    assert set(grads) == set(want)
    for name, w in want.items():
        torch.testing.assert_close(grads[name], w, rtol=1e-12, atol=1e-14)


def test_backprop_refuses_a_model_without_a_feedforward_pass():
    with pytest.raises(TypeError, match="PredictiveCoding"):
        Backprop().update(LayeredHopfield([4, 3]), torch.rand(2, 4), torch.tensor([0, 1]))


def test_summary_statistics_and_files(tmp_path):
    """Mean and sample std over seeds by hand; the CSV holds every row; the Markdown table
    has one line per rule with the mean ± std in percent."""
    rows = [{"rule": "a", "seed": s, "test_accuracy": acc, "val_accuracy": 0.5, "best_epoch": 1, "epoch_time_s": 2.0,
             "cos_init_all": 0.1 * s, "cos_end_all": math.nan if s == 0 else 0.9, "steps_free": 3.0}
            for s, acc in enumerate([0.90, 0.94, 0.95])]
    rows.append({**rows[0], "rule": "b", "test_accuracy": 0.5})
    summary = summarise(rows)
    a = summary[0]
    assert a["test_mean"] == pytest.approx(np.mean([0.90, 0.94, 0.95]))
    assert a["test_std"] == pytest.approx(np.std([0.90, 0.94, 0.95], ddof=1))
    assert a["cos_init_all"] == pytest.approx(0.1) and a["cos_end_all"] == pytest.approx(0.9)   # NaN ignored
    assert summary[1]["test_std"] == 0.0 and summary[1]["seeds"] == 1
    paths = write(rows, tmp_path)
    with paths["csv"].open() as fh:
        back = list(csv.DictReader(fh))
    assert [float(r["test_accuracy"]) for r in back] == [r["test_accuracy"] for r in rows]
    table = paths["md"].read_text().splitlines()
    assert len(table) == 4 and "93.00 ± 2.65 (n=3)" in table[2] and paths["png"].stat().st_size > 0
    assert markdown(summary) == paths["md"].read_text()


def test_compare_trains_every_entry_on_the_same_split():
    """Two rules, one epoch on digits: one row per rule and seed; bp's update is the exact
    gradient of its own net (cosine 1 with implicit differentiation), EP's is not."""
    data = dynets.data.digits()
    settle = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=100)
    entries = {"bp": Entry(lambda seed: PredictiveCoding([64, 32, 10]), lambda seed: Backprop(),
                           lambda ps: torch.optim.Adam(ps, 1e-2)),
               "ep": Entry(lambda seed: LayeredHopfield([64, 32, 10]), lambda seed: EquilibriumPropagation(0.5, settle=settle),
                           lambda ps: torch.optim.Adam(ps, 1e-2))}
    rows = compare(entries, data, epochs=1, batch_size=64, seeds=[0, 1], probe=32,
                   reference_settle=SettleOptions(method="fast_euler", step_size=0.2, atol=1e-6, max_time=400),
                   progress=lambda _: None)
    assert [(r["rule"], r["seed"]) for r in rows] == [("bp", 0), ("bp", 1), ("ep", 0), ("ep", 1)]
    assert all(r["cos_end_all"] == pytest.approx(1.0, abs=1e-4) for r in rows[:2])
    assert all(0.3 < r["cos_end_all"] < 0.999 for r in rows[2:])
    assert all(r["test_accuracy"] > 0.5 for r in rows), [r["test_accuracy"] for r in rows]


def test_a_row_with_epochs_and_batch_size_of_its_own_trains_them_and_the_table_says_so():
    """An entry's ``epochs`` and ``batch_size`` override the table's: its optimizer takes one step per
    batch of every epoch (digits: 1,258 training rows; in batches of 100, 13 an epoch: 39 steps in 3
    epochs, not the table's 1 epoch of 5 batches of 256), its row records 3 and 100 and the Markdown
    table has epochs and batch columns; a row without them trains the table's."""
    from dynets.studies.compare import run_entry
    steps = []

    def adam(ps):
        optimizer = torch.optim.Adam(ps, 1e-2)
        optimizer.register_step_post_hook(lambda *_: steps.append(1))
        return optimizer
    data = dynets.data.digits()
    run = functools.partial(run_entry, data=data, epochs=1, batch_size=256, seed=0, probe=8,
                            reference_settle=SettleOptions(method="fast_euler", step_size=0.2, atol=1e-6, max_time=400))
    rows = [run("own", Entry(lambda seed: PredictiveCoding([64, 32, 10]), lambda seed: Backprop(), adam, epochs=3,
                             batch_size=100))]
    own_steps = 3 * math.ceil(len(data.train.y) / 100)
    assert len(steps) == own_steps == 39 and (rows[0]["epochs"], rows[0]["batch_size"]) == (3, 100)
    rows.append(run("table", Entry(lambda seed: PredictiveCoding([64, 32, 10]), lambda seed: Backprop(), adam)))
    assert len(steps) == own_steps + 5 and (rows[1]["epochs"], rows[1]["batch_size"]) == (1, 256)
    head, _, own, table = markdown(summarise(rows)).splitlines()
    for column, mine, theirs in (("epochs", "3", "1"), ("batch", "100", "256")):
        at = head.split(" | ").index(column)
        assert own.split(" | ")[at] == mine and table.split(" | ")[at] == theirs


def test_a_row_with_a_schedule_trains_at_its_rates():
    """An entry's ``scheduler`` is built on its optimizer and stepped after every epoch: halving
    the rate each epoch (StepLR, γ = ½), 3 epochs leave 1e-2 · ½³; every step of epoch k ran at
    1e-2 · ½^(k−1)."""
    from dynets.studies.compare import run_entry
    rates, built = [], []

    def adam(ps):
        optimizer = torch.optim.Adam(ps, 1e-2)
        optimizer.register_step_post_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
        built.append(optimizer)
        return optimizer
    halve = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    entry = Entry(lambda seed: PredictiveCoding([64, 32, 10]), lambda seed: Backprop(), adam, scheduler=halve)
    run_entry("halved", entry, dynets.data.digits(), epochs=3, batch_size=256, seed=0, probe=8,
              reference_settle=SettleOptions(method="fast_euler", step_size=0.2, atol=1e-6, max_time=400))
    per_epoch = len(rates) // 3
    assert rates == [1e-2 * 0.5 ** k for k in range(3) for _ in range(per_epoch)]
    assert built[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 3)


def test_a_probe_that_cannot_settle_leaves_the_trained_run_in_the_table():
    """The alignment probe's exact gradient settles to its own tolerance; where it cannot (here: two
    Euler steps to atol 1e-12) the row keeps its trained accuracy, without cosine columns, and says so
    (the conv table's kp row lost its third seed's 10 epochs to one such probe)."""
    from dynets.studies.compare import run_entry
    settle = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=100)
    entry = Entry(lambda seed: LayeredHopfield([64, 32, 10]), lambda seed: EquilibriumPropagation(0.5, settle=settle),
                  lambda ps: torch.optim.Adam(ps, 1e-2))
    with pytest.warns(UserWarning, match="alignment probe left out"):
        row = run_entry("ep", entry, dynets.data.digits(), epochs=1, batch_size=64, seed=0, probe=16,
                        reference_settle=SettleOptions(method="fast_euler", step_size=0.2, atol=1e-12, max_time=0.4))
    assert row["test_accuracy"] > 0.5 and not any(k.startswith("cos_") for k in row)


def test_the_training_alignment_measure_measures_against_the_rules_own_cost():
    """Backprop with cross-entropy is its own exact gradient: the app's per-epoch probe
    reports cosine 1 only if its reference uses the rule's cost (not squared error)."""
    from dynets.app.run import alignment_measure
    from dynets.costs import CrossEntropy

    torch.manual_seed(0)
    model = PredictiveCoding([6, 8, 3]).double()
    x, y = torch.rand(7, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    rule = Backprop(SettleOptions(method="fast_euler", step_size=0.2, atol=1e-10, max_time=100), cost=CrossEntropy())
    metrics = alignment_measure(rule, x, y)(model)
    assert metrics["align_cos/all"] == pytest.approx(1.0, abs=1e-6)


def _script():
    """scripts/compare.py as a module (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("table", ["compare", "compare_bars"])
def test_every_row_of_every_table_builds_a_model_its_rule_can_train(table):
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    script = _script()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose(table)
    data = instantiate(cfg.data) if table == "compare_bars" else dynets.data.digits()
    for name, row in script.entries(cfg, data).items():
        node = cfg.rules[name]
        model, rule = row.model(0), row.rule(0)
        rule.check_model(model)
        assert model.sizes[0] == data.n_features, name
        assert row.optimizer(list(model.parameters())).defaults["lr"] == node.lr, name
        if "seed" in inspect.signature(type(model)).parameters:   # its own generator takes the seed
            other = row.model(1)
            assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters())), name


def test_every_row_of_the_conv_table_trains_the_same_conv_net_on_images():
    """compare_conv.yaml: each row's rule accepts its model, and every model is the same P_CNN on the
    digits' (1, 8, 8) images: 3×3 convolutions to 16 and 32 channels, each halving the map by 2×2 pooling
    or at stride 2 (8 → 4 → 2), so the read-out sees 32·2·2 = 128 inputs; the EP rows are its three variants. The
    asymmetric-feedback rows train ConvAsymmetric, the same forward tensors, B fixed (fa, vfep) or learned
    (kp, mirror): with random feedback max-pooling does not settle, so fa, vfep and kp halve the maps by
    convolutions at stride 2 instead of pooling; the others max-pool, and so does the mirror, whose B is
    pre-trained to Wᵀ before W learns."""
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    script = _script()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("compare_conv")
    data = dynets.data.digits()
    rows = script.entries(cfg, data)
    asymmetric = {"fa": "random", "vfep": "random", "kp": "learned", "mirror": "learned"}
    pooling = {"fa": ["none", "none"], "vfep": ["none", "none"], "kp": ["none", "none"]}   # the others max-pool
    assert {"bp", "pc", "ep", "chl", "implicit", "bptt", "np", "wp", *asymmetric} <= set(rows)
    want = [(16, 1, 3, 3), (16,), (32, 16, 3, 3), (32,), (10, 128), (10,)]
    variants = set()
    for name, row in rows.items():
        model, rule = row.model(0), row.rule(0)
        rule.check_model(model)
        forward = [tuple(p.shape) for n, p in model.named_parameters() if not n.startswith("feedback.")]
        assert model.in_shape == data.sample_shape == (1, 8, 8), name
        assert forward == want, name
        convs = [m for m in model.modules() if isinstance(m, dynets.couplings.Conv)]
        pools = pooling.get(name, ["max", "max"])
        assert [m.pool for m in convs] == pools, name
        assert [m.conv.stride for m in convs] == [(2, 2) if pools == ["none", "none"] else (1, 1)] * 2, name
        assert [m.out_shape for m in convs] == [(16, 4, 4), (32, 2, 2)], name
        assert row.optimizer(list(model.parameters())).defaults["lr"] == cfg.rules[name].lr, name
        expected = (dynets.models.ConvPredictiveCoding if name in ("bp", "pc") else
                    dynets.models.ConvAsymmetric if name in asymmetric else dynets.models.ConvHopfield)
        assert type(model) is expected, name
        if name in asymmetric:
            assert model.feedback_mode == asymmetric[name], name
        if row.scheduler is not None:   # a row's cosine decay ends at its own last epoch
            assert row.scheduler(row.optimizer(list(model.parameters()))).T_max == row.epochs, name
        if getattr(model, "softmax", False):   # a softmax read-out is trained through the cross-entropy
            assert isinstance(rule.cost, dynets.costs.CrossEntropy), name
        if isinstance(rule, EquilibriumPropagation):
            variants.add(rule.variant)
    assert variants == {"centered", "positive", "negative"}


def test_progress_tells_every_epoch_of_every_run_with_its_validation_metric():
    """``progress`` hears each epoch of each (rule, seed) as it ends, before the row is written (a conv
    EP run on Fashion-MNIST takes an hour): the best epoch's reported validation accuracy is the row's."""
    import re
    data = dynets.data.digits()
    entries = {"bp": Entry(lambda seed: PredictiveCoding([64, 16, 10]), lambda seed: Backprop(),
                           lambda ps: torch.optim.Adam(ps, 1e-2))}
    heard = []
    rows = compare(entries, data, epochs=3, batch_size=64, seeds=[0, 1], probe=8, progress=heard.append)
    epochs = [line for line in heard if " epoch " in line]
    assert [line.split(":")[0] for line in epochs] == [f"bp seed {s} epoch {e}" for s in (0, 1) for e in (1, 2, 3)]
    for row in rows:
        line = epochs[3 * row["seed"] + row["best_epoch"] - 1]
        assert float(re.search(r"val_accuracy ([0-9.]+)", line).group(1)) == pytest.approx(row["val_accuracy"], abs=1e-4)


def test_the_fashion_conv_table_trains_the_published_mnist_cnn():
    """compare_conv_fashion.yaml: every row of compare_conv on Fashion-MNIST's (1, 28, 28) images, each
    model the published MNIST CNN as the bench builds it (bench_references.CONV_NET: 5×5 convolutions to
    32 and 64 channels, no padding, 2×2 pooling, 28 → 24 → 12 → 8 → 4, read-out 64·4·4 = 1024 → 10)."""
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from dynets.studies.bench_references import CONV_NET
    script = _script()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("compare_conv_fashion")
        digits = compose("compare_conv")
    assert cfg.data._target_ == "dynets.data.fashion_mnist"
    from types import SimpleNamespace
    sizes = SimpleNamespace(n_features=784, n_classes=10, sample_shape=(1, 28, 28))   # what the rows read
    rows = script.entries(cfg, sizes)
    assert set(rows) == set(digits.rules)
    want = [tuple(p.shape) for p in dynets.models.ConvHopfield(**CONV_NET).parameters()]
    assert want == [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (10, 1024), (10,)]
    for name, row in rows.items():
        model = row.model(0)
        row.rule(0).check_model(model)
        assert model.in_shape == (1, 28, 28), name
        assert [tuple(p.shape) for n, p in model.named_parameters() if not n.startswith("feedback.")] == want, name
        assert cfg.rules[name].lr == (1e-3 if name in ("bp", "pc", "ep") else digits.rules[name].lr), name
        assert row.batch_size == (64 if name == "bp" else None), name   # bp's own; the others the table's 128


def test_probe_zero_trains_without_the_alignment_probe():
    """``probe=0``: no exact gradient is solved for (its adjoint can outlast an epoch on a 28×28 conv net),
    the row has no cosine columns, and the run is the one a probed run trains (bp's probes draw nothing)."""
    from dynets.studies.compare import run_entry
    entry = Entry(lambda seed: PredictiveCoding([64, 16, 10]), lambda seed: Backprop(),
                  lambda ps: torch.optim.Adam(ps, 1e-2))
    settle = SettleOptions(method="fast_euler", step_size=0.2, atol=1e-6, max_time=400)
    run = lambda probe: run_entry("bp", entry, dynets.data.digits(), epochs=1, batch_size=64, seed=0, probe=probe,
                                  reference_settle=settle)
    bare, probed = run(0), run(16)
    assert not any(k.startswith("cos_") for k in bare)
    assert probed["cos_end_all"] == pytest.approx(1.0, abs=1e-4)
    assert bare["test_accuracy"] == probed["test_accuracy"]

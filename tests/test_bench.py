"""scripts/bench.py's maths, never its timings: each family's timed step is its rule's update on
the same batch, dynets' stopped phases reach the residual the textbook leaves, and the README's
speed table is what the bench's committed lines give."""
import copy
import re
from pathlib import Path

import pytest
import torch

from dynets.studies.bench_families import FAMILIES, PROBES, build, grads_step
from dynets.studies.bench_references import REFERENCES, stopped_rules
from dynets.studies.speed_table import counts_table, read_lines, speed_table
from dynets.studies.timing import random_batch

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_familys_timed_step_writes_its_rules_update_on_the_same_batch(name):
    model, rule, x, labels = build(name, [12, 8, 4], 6, CPU)
    twin, twin_rule, x2, labels2 = build(name, [12, 8, 4], 6, CPU)   # seeded: the same weights, batch and streams
    assert torch.equal(x, x2) and torch.equal(labels, labels2)
    grads_step(name, model, rule, x, labels)()
    want = twin_rule.sleep_grads(twin) if FAMILIES[name].sleep else twin_rule.update(twin, x, labels).grads
    assert want, f"{name}'s rule trains nothing"
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n not in want), n
        assert n not in want or torch.equal(p.grad, want[n]), n


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.probes])
def test_the_one_probe_step_differs_from_the_timed_one_only_in_its_probes(name):
    many, one = build(name, [12, 8, 4], 6, CPU)[1], build(name, [12, 8, 4], 6, CPU, probes=1)[1]
    assert (many.n_probes, one.n_probes) == (PROBES, 1)
    assert settings(many) == settings(one)


def settings(rule):
    """A rule's attributes but its probes, comparable: the cost's class, the generator's seed."""
    plain = {"cost": type, "generator": torch.Generator.initial_seed}
    return {k: plain.get(k, lambda v: v)(v) for k, v in vars(rule).items() if k != "n_probes"}


@pytest.mark.parametrize("family", sorted(REFERENCES))
def test_dynets_stopped_phases_reach_the_residual_the_textbook_leaves(family):
    """Every sample of every phase at ‖ds/dt‖ within the reference's worst, for each stopped method."""
    make_model, reference, _, _ = REFERENCES[family]
    x, labels = random_batch([64], 10, 16, CPU, 0)
    model = make_model([64, 32, 10])
    ref = reference(copy.deepcopy(model.layers))
    r = ref.residuals(model, x, labels)
    for name, rule in stopped_rules(family, ref, r, cuda=False).items():
        c = rule.condition(model, x, labels)
        free = rule.settle(model, c)
        nudged = getattr(rule, "nudged_settle", rule.settle)
        signs = (1.0, -1.0) if family == "ep" else (1.0,)
        ends = [nudged(model, c.nudged(s * rule.beta), init=free.state) for s in signs]
        if family == "ep":
            assert free.residual.max() <= r["free"], name
        assert max(eq.residual.max().item() for eq in ends) <= r["nudged"], name


LINES = [
    {"device": "cpu", "threads": 2, "config": "ep 784-512-10/b128", "method": "dynets", "ms_dynets": 8.0,
     "ms_dynets_gauss_seidel": 4.0, "ms_autograd_reference": 40.0, "ms_backprop": 2.0, "ratio_vs_backprop": 4.0,
     "dynets_best": "dynets_gauss_seidel"},
    {"device": "cpu", "threads": 2, "config": "node_perturbation 784-512-10/b128", "method": "node_perturbation",
     "ms_node_perturbation": 30.0, "ms_one_probe": 7.5, "ms_backprop": 2.5, "ratio_vs_backprop": 12.0,
     "ms_per_probe": 1.5},
    {"device": "cuda", "threads": 16, "config": "conv_ep mnist-cnn/b128", "method": "dynets", "ms_dynets": 70.0,
     "ms_backprop": 4.4, "ms_autograd_reference": 306.0, "ratio_vs_backprop": 15.9},
]


def test_the_speed_table_of_sample_lines():
    assert speed_table(LINES) == (
        "| step | net / batch | ms | × backprop | textbook ÷ dynets | note |\n"
        "|---|---|---|---|---|---|\n"
        "| ep | 784-512-10/b128 | 4.00 | 2.00 | 10.0 | dynets_gauss_seidel |\n"
        "| node_perturbation | 784-512-10/b128 | 30.00 | 12.00 | — | 1.50 ms per probe |\n"
        "| conv_ep | mnist-cnn/b128 | 70.00 | 15.91 | 4.4 |  |\n"
        "\n"
        "Measured on cpu, 2 threads; cuda, 16 threads.")


COUNTED = [
    {"config": "ep 784-512-10/b128", "method": "dynets", "macs_dynets": 300, "macs_dynets_gauss_seidel": 150,
     "macs_backprop": 100, "ops_dynets_gauss_seidel": 220, "syncs_dynets_gauss_seidel": 4,
     "sweeps_dynets_gauss_seidel": {"steps_free": 6, "steps_nudged_-": 3, "steps_nudged_+": 2}},
    {"config": "wake_sleep 784-512-10/b128", "method": "wake_sleep", "macs_wake_sleep": 400, "macs_backprop": 100,
     "ops_wake_sleep": 232, "syncs_wake_sleep": 4},
    {"config": "node_perturbation 784-512-10/b128", "method": "node_perturbation", "macs_node_perturbation": 1900,
     "macs_backprop": 100, "ops_node_perturbation": 306, "syncs_node_perturbation": 5,
     "sweeps_node_perturbation": {"steps_free": 4, "steps_perturbed": 9.0}},
]


def test_the_counts_table_of_sample_lines():
    """Times from the timed lines (ep: of its fastest method), counts from the counted ones; a
    config with no timed line is left out."""
    assert counts_table(COUNTED, LINES) == (
        "| step | net / batch | × backprop, time | × backprop, multiply–adds | ops per step | host syncs | sweeps |\n"
        "|---|---|---|---|---|---|---|\n"
        "| ep | 784-512-10/b128 | 2.00 | 1.50 | 220 | 4 | free 6, nudged_- 3, nudged_+ 2 |\n"
        "| node_perturbation | 784-512-10/b128 | 12.00 | 19.00 | 306 | 5 | free 4, perturbed 9 |")


def test_the_readmes_speed_table_is_the_committed_bench_lines():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- speed table: python scripts/bench.py --table (\S+) -->\n(.*?)\n<!-- end speed table -->",
                      readme, re.S)
    assert found, "README.md has no generated speed table between its markers"
    assert found.group(2) == speed_table(read_lines(ROOT / found.group(1)))


def test_the_epoch_benchs_backprop_run_is_the_main_jobs_but_for_the_rule_and_model_class():
    """bench.py's fashion_epochs compares the main job's EP epoch with backprop on the same sizes,
    hidden activation, data, batch, epochs, optimizer and seed: only the model class and rule differ."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import fashion_configs
    ep, bp = fashion_configs(CPU).values()
    assert (bp["rule"]["_target_"], ep["rule"]["_target_"]) == ("dynets.rules.Backprop", "dynets.rules.EquilibriumPropagation")
    assert bp["model"]["sizes"] == ep["model"]["sizes"] and bp["model"]["activation"] == ep["model"]["activation"]
    assert {k: v for k, v in bp.items() if k not in ("model", "rule")} == {k: v for k, v in ep.items() if k not in ("model", "rule")}


def test_the_speed_pages_counts_table_is_the_committed_lines():
    page = (ROOT / "docs" / "results" / "speed.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- counts table: python scripts/bench.py --table (\S+) --counts (\S+) -->\n(.*?)\n"
                      r"<!-- end counts table -->", page, re.S)
    assert found, "docs/results/speed.md has no generated counts table between its markers"
    assert found.group(3) == counts_table(read_lines(ROOT / found.group(2)), read_lines(ROOT / found.group(1)))

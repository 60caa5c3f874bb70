"""The bench's counts of a step against closed forms: multiply–adds of backprop and of an EP step
from the sizes and the sweeps it took, products torch's counter leaves out, operations and syncs."""
import pytest
import torch
from torch import nn

from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation
from dynets.settle import SettleOptions
from dynets.studies.bench_families import FAMILIES, build, grads_step
from dynets.studies.counts import FORMULAS, OpCounter, counts, step_counts
from dynets.studies.timing import backprop, random_batch, train_step, with_adam

CPU = torch.device("cpu")
SIZES = [[20, 12, 4], [20, 12, 8, 4], [30, 16, 16, 6, 4]]


def couplings(sizes: list[int]) -> int:
    """Σ n_l n_{l+1}: the multiply–adds of one sample through every weight matrix once."""
    return sum(a * b for a, b in zip(sizes, sizes[1:]))


@pytest.mark.parametrize("sizes", SIZES)
def test_a_backprop_step_costs_three_passes_but_the_inputs_gradient(sizes):
    """Forward B·Σ n_l n_{l+1}; backward the weights' gradients (as many) and the inputs' of every
    layer but the first (x needs none): B·(3·Σ n_l n_{l+1} − n_0 n_1). Adam multiplies no matrices."""
    batch = 5
    x, labels = random_batch(sizes[:1], sizes[-1], batch, CPU, 0)
    step = backprop(sizes, nn.Sigmoid(), x, nn.functional.one_hot(labels, sizes[-1]).float())
    assert step_counts(step)["macs"] == batch * (3 * couplings(sizes) - sizes[0] * sizes[1])


@pytest.mark.parametrize("sizes", SIZES)
def test_an_ep_step_costs_its_drive_its_sweeps_and_its_hebbian_terms(sizes):
    """A Gauss–Seidel EP step: W₀x once and the update's (a₁ − b₁)ᵀx once (2·n_0 n_1 per sample),
    and one evaluation of every coupling between settled layers both ways (2·Σ_{l≥1} n_l n_{l+1})
    at the start of each phase, after each of its sweeps, and once more for the update's two
    Hebbian terms of each of those couplings."""
    batch = 5
    x, labels = random_batch(sizes[:1], sizes[-1], batch, CPU, 0)
    model = LayeredHopfield(sizes, "hard_sigmoid")
    rule = EquilibriumPropagation(0.5, settle=SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-4,
                                                            max_time=400, check_every=5))
    got = step_counts(lambda: (train_step(rule, model, x, labels),))
    phases = got["sweeps"]
    assert set(phases) == {"steps_free", "steps_nudged_+", "steps_nudged_-"} and min(phases.values()) > 1
    evaluations = sum(k + 1 for k in phases.values()) + 1
    assert got["macs"] == batch * (2 * sizes[0] * sizes[1] + evaluations * 2 * couplings(sizes[1:]))


@pytest.mark.parametrize("product, macs", [
    (lambda a, v: a @ v, 7 * 5),                                   # mv: m·n
    (lambda a, v: torch.addmv(torch.ones(7), a, v), 7 * 5),
    (lambda a, v: v @ v, 5),                                       # dot: n
    (lambda a, v: torch.linalg.lstsq(a, torch.ones(7, 1)).solution, 7 * 5 * 5)])   # Householder QR: m·n²
def test_products_torchs_counter_leaves_out_are_counted(product, macs):
    a, v = torch.randn(7, 5), torch.randn(5)
    assert step_counts(lambda: product(a, v))["macs"] == macs


def test_operations_are_counted_one_per_dispatch():
    a = torch.randn(3, 4)
    got = step_counts(lambda: ((a + 1).exp().sum().item(), a.t().mm(a)[0, 0].item()))
    # add, exp, sum, item | t, mm, select, select, item
    assert (got["ops"], got["macs"]) == (9, 4 * 3 * 4)


def test_every_read_of_a_value_by_the_host_is_a_sync():
    """.tolist() and .numpy() dispatch nothing on CPU (settle's residual check reads by .numpy())."""
    a = torch.randn(3, 4)
    got = step_counts(lambda: (a.sum().item(), a[0].tolist(), a.numpy(), float(a[0, 0]), bool(a[0, 0] > 0),
                               int(a[0, 0]), a + 1))
    assert got["syncs"] == 6


def test_a_familys_line_counts_its_timed_step_and_backprop():
    """bench_family's counts: the rule's own sweeps, and its multiply–adds over backprop's."""
    model, rule, x, labels = build("chl", [12, 8, 4], 6, CPU)
    x2, lb = random_batch([12], 4, 6, CPU, 0)
    steps = {"chl": with_adam(model.parameters(), grads_step("chl", model, rule, x, labels)),
             "backprop": backprop([12, 8, 4], nn.Sigmoid(), x2, nn.functional.one_hot(lb, 4).float())}
    line = counts(steps, "chl")
    assert set(line["sweeps_chl"]) == {"steps_free", "steps_clamped"}
    assert line["macs_backprop"] == 6 * (3 * (12 * 8 + 8 * 4) - 12 * 8)
    assert line["macs_ratio_vs_backprop"] == line["macs_chl"] / line["macs_backprop"]


# ATen operations that multiply matrices or solve with them: each must be in the counter's registry.
PRODUCT_OPS = ["mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "addbmm", "addbmm_", "mv", "addmv", "addmv_",
               "dot", "vdot", "addr", "addr_", "ger", "outer", "tensordot", "linalg_lstsq", "linalg_solve",
               "_linalg_solve_ex", "linalg_inv", "linalg_inv_ex", "cholesky_solve", "linalg_solve_triangular",
               "triangular_solve", "convolution", "_convolution", "convolution_backward", "conv2d", "conv1d"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_product_a_familys_step_dispatches_is_counted(name):
    model, rule, x, labels = build(name, [12, 8, 4], 6, CPU)
    ops = OpCounter()
    with ops:
        with_adam(model.parameters(), grads_step(name, model, rule, x, labels))()
    counted = {str(op) for op in FORMULAS}
    products = {f"aten.{op}" for op in PRODUCT_OPS} & set(ops.calls)
    assert products and products <= counted, products - counted

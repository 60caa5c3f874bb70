"""dynets' EP and PC rules against the textbook autograd implementations of dynets.testing
(same weights, batch and step budget: the same gradients), and those references against the
exact gradient, so that a wrong sign or β anywhere shows up as a number."""
import copy

import pytest
import torch

from dynets import Condition, SettleOptions
from dynets.models import ConvHopfield, LayeredHopfield, PredictiveCoding
from dynets.rules import Backprop, ImplicitDifferentiation
from dynets.testing import ReferenceConvEP, ReferenceEP, ReferencePC, check_same_grads, grad_mismatch

SIZES = [6, 9, 7, 3]


def problem(cls, activation, batch=5, seed=0):
    torch.manual_seed(seed)
    model = cls(SIZES, activation).double()
    x = torch.rand(batch, SIZES[0], dtype=torch.float64)
    return model, x, torch.randint(0, SIZES[-1], (batch,))


def reference_grads(reference, model, x, y):
    grads = reference.grads(x, y)
    return torch.cat([grads[name].flatten() for name, _ in model.named_parameters()])


def flat_grads(model, rule, x, y):
    grads = rule.update(model, x, y).grads
    return torch.cat([grads[name].flatten() for name, _ in model.named_parameters()])


@pytest.mark.parametrize("reference_class, model_class, activation",
                         [(ReferenceEP, LayeredHopfield, "hard_sigmoid"), (ReferencePC, PredictiveCoding, "tanh")])
def test_rule_writes_the_references_grads(reference_class, model_class, activation):
    """Both dynets solvers (its own Euler loop and torchdiffeq's) give the textbook gradients to rounding."""
    model, x, y = problem(model_class, activation)
    check_same_grads(model, reference_class(copy.deepcopy(model.layers)), x, y, tol=1e-10)


@pytest.mark.parametrize("reference_class, model_class, activation, beta",
                         [(ReferenceEP, LayeredHopfield, "hard_sigmoid", 0.5), (ReferencePC, PredictiveCoding, "tanh", 0.1)])
def test_the_comparison_sees_a_wrong_beta_or_sign(reference_class, model_class, activation, beta):
    """The check has power: a rule at 0.9β is far outside its tolerance (the limit tests below
    pin the sign: the reference is the exact gradient as β → 0)."""
    model, x, y = problem(model_class, activation)
    reference = reference_class(copy.deepcopy(model.layers), beta=beta)
    off = reference.rule()
    off.beta = 0.9 * beta
    assert max(grad_mismatch(model, reference, off, x, y).values()) > 1e-3


def conv_problem(pool, batch=3, seed=0):
    """A 1x12x12 image, conv 3x3 (pad 1) + pool, conv 3x3 + pool, dense 4: every kind of coupling."""
    torch.manual_seed(seed)
    model = ConvHopfield(12, [1, 3, 4], [3, 3], [1, 1], [1, 0], [pool, pool], [4]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)   # states off zero and inside the box
    return model, torch.rand(batch, 1, 12, 12, dtype=torch.float64), torch.randint(0, 4, (batch,))


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
def test_conv_ep_writes_the_published_codes_grads(pool):
    """ConvHopfield's EP, through its couplings' adjoints, equals the published code's autograd
    of Φ over pool(conv(s)) at every step, at the same steps (Δt = 1, the synchronous iteration)."""
    model, x, y = conv_problem(pool)
    reference = ReferenceConvEP(copy.deepcopy(model.couplings), free_steps=25, nudged_steps=8)
    check_same_grads(model, reference, x, y, tol=1e-10)
    off = reference.rule()
    off.beta = 0.9 * reference.beta   # the check has power
    assert max(grad_mismatch(model, reference, off, x, y).values()) > 1e-3


def test_reference_ep_is_the_gradient_in_the_limit():
    """Long phases and a small β: textbook EP → the exact gradient (implicit differentiation)."""
    model, x, y = problem(LayeredHopfield, "hard_sigmoid")
    reference = ReferenceEP(copy.deepcopy(model.layers), beta=1e-3, free_steps=400, nudged_steps=400)
    got = reference_grads(reference, model, x, model.target(y))
    tight = SettleOptions(method="fast_euler", atol=1e-12, max_time=2000, check_every=1)
    want = flat_grads(model, ImplicitDifferentiation(tight, adjoint_tol=1e-12, adjoint_max_steps=100000), x, y)
    assert (got - want).norm() / want.norm() < 1e-4


def test_reference_pc_is_backprop_in_the_limit():
    """Long nudged phase and a small β: textbook PC → backprop of the squared error."""
    model, x, y = problem(PredictiveCoding, "tanh")
    reference = ReferencePC(copy.deepcopy(model.layers), beta=1e-4, steps=400)
    got = reference_grads(reference, model, x, model.target(y))
    want = flat_grads(model, Backprop(), x, y)
    assert (got - want).norm() / want.norm() < 1e-3


def test_ep_residuals_are_what_dynets_settle_reports_after_the_same_steps():
    """The residuals the benchmark stops at: ‖ds/dt‖ at the reference's states equals the residual of
    dynets' own settles with the same steps from the same start (free, then each nudged phase from it)."""
    model, x, y = problem(LayeredHopfield, "hard_sigmoid")
    reference = ReferenceEP(copy.deepcopy(model.layers))
    rule, c = reference.rule(), Condition(x, model.target(y))
    free = rule.settle(model, c)
    nudged = [rule.nudged_settle(model, c.nudged(b), init=free.state) for b in (reference.beta, -reference.beta)]
    want = {"free": free.residual.max().item(), "nudged": max(eq.residual.max().item() for eq in nudged)}
    assert reference.residuals(model, x, y) == pytest.approx(want, rel=1e-9)


def test_pc_residual_is_what_dynets_settle_reports_after_the_same_steps():
    model, x, y = problem(PredictiveCoding, "tanh")
    reference = ReferencePC(copy.deepcopy(model.layers))
    rule, c = reference.rule(), model.prepare(Condition(x, model.target(y)))
    eq = rule.settle(model, c.nudged(reference.beta), init=rule.settle(model, c).state)
    assert reference.residuals(model, x, y) == pytest.approx({"nudged": eq.residual.max().item()}, rel=1e-9)



@pytest.mark.parametrize("reference_class, model_class, activation",
                         [(ReferenceEP, LayeredHopfield, "hard_sigmoid"), (ReferencePC, PredictiveCoding, "tanh")])
def test_a_reference_returns_its_gradients_as_a_rule_does(reference_class, model_class, activation):
    """Keyed by the model's parameter names, no p.grad written (the numbers: the limit tests above)."""
    model, x, y = problem(model_class, activation)
    reference = reference_class(copy.deepcopy(model.layers))
    grads = reference.grads(x, model.target(y))
    assert list(grads) == [name for name, _ in model.named_parameters()]
    assert all(p.grad is None for p in reference.layers.parameters())

"""The dendritic study's measures against independent answers: the cosine by hand, backprop's
errors by the chain rule written out, the held-out ‖v_A‖ against the sleep rule's own metric, and
the traces' ends against settled steady states."""
from __future__ import annotations

import math

import pytest
import torch

from dynets import Condition, SettleOptions, settle
from dynets.rules import DendriticSleep
from dynets.studies import dendritic as study
from test_dendritic import G, batch, microcircuit

TIGHT = SettleOptions(method="gauss_seidel", step_size=0.5, atol=1e-12, max_time=2000)


def test_cosine_by_hand():
    assert study.cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert study.cosine(torch.tensor([3.0, -4.0]), torch.tensor([-6.0, 8.0])) == pytest.approx(-1.0)
    # a whole batch at once: ⟨a, b⟩ = 1·2 + 2·0 + 0·1 + 1·1 = 3, ‖a‖ = √6, ‖b‖ = √6
    a, b = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    assert study.cosine(a, b) == pytest.approx(3 / 6)


def test_backprop_errors_are_the_chain_rule_written_out():
    """∂L/∂r_2 = ĝ_3 W_3ᵀ (φ'(u_3) ⊙ (u_3 − t)) and ∂L/∂r_1 = ĝ_2 W_2ᵀ (φ'(u_2) ⊙ ∂L/∂r_2), sigmoid φ' = φ(1 − φ)."""
    model, (x, target) = microcircuit(), batch()
    g_l, g_B, g_A = G["g_l"], G["g_B"], G["g_A"]
    hidden, output = g_B / (g_l + g_B + g_A), g_B / (g_l + g_B)
    w = [up.weight for up in model.up]
    u1 = hidden * (x @ w[0].T + model.up[0].bias)
    u2 = hidden * (torch.sigmoid(u1) @ w[1].T + model.up[1].bias)
    u3 = output * (torch.sigmoid(u2) @ w[2].T + model.up[2].bias)
    slope = lambda u: torch.sigmoid(u) * (1 - torch.sigmoid(u))
    e2 = output * (slope(u3) * (u3 - target)) @ w[2]
    e1 = hidden * (slope(u2) * e2) @ w[1]
    got = study.backprop_errors(model, x, target)
    torch.testing.assert_close(got[1], e2.detach())
    torch.testing.assert_close(got[0], e1.detach())


def test_transpose_down_sets_the_top_down_weights_to_the_forward_ones_transposed():
    model = study.transpose_down_(microcircuit())
    for k, down in enumerate(model.down):
        assert torch.equal(down.weight, model.up[k + 1].weight.T)


def test_apical_alignment_is_high_only_in_the_self_predicting_state():
    """The measure can fail: with random lateral weights the apical potentials carry the
    interneurons' mismatch, not the error."""
    model, (x, target) = study.transpose_down_(microcircuit()), batch(n=16)
    before = study.apical_alignment(model, x, target, 0.01, TIGHT)
    after = study.apical_alignment(model.self_predicting_(), x, target, 0.01, TIGHT)
    assert min(after) >= 0.99 and max(before) < 0.9


def test_the_held_out_apical_norm_is_the_sleep_rules_own_metric():
    """Without noise, the sleep rule's ``apical`` metric (measured on its batch) is the same number."""
    model, (x, _) = microcircuit(), batch(n=8)
    metric = DendriticSleep(noise=0.0, settle=TIGHT).update(model, x).metrics["apical"]
    assert study.apical_norm(model, x, TIGHT) == pytest.approx(metric, rel=1e-9)
    assert study.apical_norm(model.self_predicting_(), x, TIGHT) < 1e-9


def test_the_traces_start_at_rest_and_reach_the_free_then_the_taught_steady_state():
    model, (x, target) = microcircuit().self_predicting_(), batch()
    curves = study.traces(model, x, target, beta=0.5, free_time=60.0, taught_time=60.0, dt=0.05)
    free = settle(model, Condition(x), options=TIGHT).state
    taught = settle(model, Condition(x, target, beta=0.5), options=TIGHT).state
    onset = int((curves["t"] <= 60.0 + 1e-9).nonzero().max())
    assert curves["t"][onset].item() == pytest.approx(60.0)
    for k, (u_free, u_taught) in enumerate(zip(free[::2], taught[::2]), start=1):
        assert curves[f"soma.{k}"][0].abs().max() == 0
        torch.testing.assert_close(curves[f"soma.{k}"][onset], u_free, rtol=0, atol=1e-6)
        torch.testing.assert_close(curves[f"soma.{k}"][-1], u_taught, rtol=0, atol=1e-6)
    torch.testing.assert_close(curves["interneuron.2"][-1], taught[3], rtol=0, atol=1e-6)


def test_the_teachers_change_of_v_a_is_v_a_itself_only_where_the_free_v_a_vanishes():
    model, (x, target) = study.transpose_down_(microcircuit()), batch(n=16)
    raw, change = (study.apical_alignment(model, x, target, 0.01, TIGHT, change=c) for c in (False, True))
    assert max(abs(a - b) for a, b in zip(raw, change)) > 0.1
    model.self_predicting_()
    raw, change = (study.apical_alignment(model, x, target, 0.01, TIGHT, change=c) for c in (False, True))
    assert raw == pytest.approx(change, abs=1e-9)

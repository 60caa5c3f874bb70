"""The bench's EP and PC lines (``scripts/bench.py``): one dynets step against the textbook
autograd version of the same rule (:mod:`dynets.testing`) and against backprop, dynets run at the
textbook's steps and stopped at the residual the textbook leaves; and the published MNIST CNN."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..models import ConvHopfield, ConvPredictiveCoding, LayeredHopfield, PredictiveCoding
from ..rules import PredictiveCodingRule, write_grads
from ..settle import SettleOptions
from ..testing import ReferenceConvEP, ReferenceEP, ReferencePC, check_same_grads
from .counts import counts
from .timing import backprop, backprop_step, random_batch, timed, train_step, with_adam

PHASES, SEED, TOL = ("steps_free", "steps_nudged_+", "steps_nudged_-"), 0, 1e-3   # TOL: of the gradient check
FIXED = {"dynets": "fast_euler", "dynets_torchdiffeq": "euler", "dynets_compiled": "fast_euler"}   # *_compiled: GPU
STOPPED = {"dynets_adaptive": ("fast_euler", 0.5), "dynets_adaptive_dt1": ("fast_euler", 1.0),
           "dynets_gauss_seidel": ("gauss_seidel", 1.0), "dynets_gauss_seidel_compiled": ("gauss_seidel", 1.0)}
REFERENCES = {   # name: (model of sizes, reference, the MLP's activation, the STOPPED methods it runs)
    "ep": (lambda s: LayeredHopfield(s, "hard_sigmoid"), ReferenceEP, nn.Hardtanh(0.0, 1.0), list(STOPPED)),
    "pc": (lambda s: PredictiveCoding(s, "tanh"), ReferencePC, nn.Tanh(), ["dynets_gauss_seidel"])}
CONV_NET = dict(in_size=28, channels=[1, 32, 64], kernels=[5, 5], strides=[1, 1], paddings=[0, 0], pools=["max"] * 2,
                fc=[10])   # the published MNIST CNN (Laborieux et al. 2021), at batch 128
gs = lambda atol: SettleOptions(method="gauss_seidel", step_size=1.0, atol=atol, max_time=400, check_every=5)


def stopped_rules(family: str, reference, residuals: dict, cuda: bool) -> dict:
    """dynets' rules of ``family`` stopped at the ``residuals`` the textbook ``reference`` leaves,
    by method name (the ``*_compiled`` ones on CUDA only)."""
    names = [n for n in REFERENCES[family][3] if cuda or not n.endswith("_compiled")]
    return {n: reference.stopped_rule(residuals, *STOPPED[n], "on" if n.endswith("_compiled") else "off")
            for n in names}


def bench_reference(family: str, sizes: list[int], batch: int, device: torch.device, repeats: int,
                    warmup: int) -> dict:
    """EP or PC at the reference's steps and stopped at its residual, against the reference and
    backprop of the same-size MLP; the JSON line (the steps each stopped method took in
    ``steps_same_residual``, the fastest dynets method in ``dynets_best``, each method's
    :func:`~dynets.studies.counts.counts` from one more step after the timed ones).

    Args:
        family: ``ep`` or ``pc``.
        sizes: the layer sizes.
        batch: rows of the batch.
        device: where it runs.
        repeats: timed steps of each method.
        warmup: untimed steps first.
    """
    make_model, reference, act, _ = REFERENCES[family]
    x, labels = random_batch(sizes[:1], sizes[-1], batch, device, SEED)
    model = make_model(sizes).to(device)
    ref, y = reference(copy.deepcopy(model.layers)), model.target(labels)
    check_same_grads(model, ref, x, labels, TOL)   # while every copy still has the same weights
    r, cuda = ref.residuals(model, x, labels), device.type == "cuda"
    stopped = stopped_rules(family, ref, r, cuda)
    fixed = {n: ref.rule(m, "on" if n.endswith("_compiled") else "off") for n, m in FIXED.items()
             if cuda or not n.endswith("_compiled")}
    steps = {name: with_adam(net.parameters(), lambda r=rule, n=net: train_step(r, n, x, labels))
             for name, rule in {**fixed, **stopped}.items()
             for net in [model if name == "dynets" else copy.deepcopy(model)]}
    named = nn.ModuleDict({"layers": ref.layers})   # its parameters named as ref.grads names them (the model's)
    steps["autograd_reference"] = with_adam(named.parameters(), lambda: write_grads(named, ref.grads(x, y)))
    steps["backprop"] = backprop(sizes, act, x, y)
    result, ms = timed(f"{family} {'-'.join(map(str, sizes))}/b{batch}", steps, device, repeats, warmup)
    used = {n: "+".join(str(m[k]) for k in PHASES if k in m) for n, rule in stopped.items()
            for m in [train_step(rule, copy.deepcopy(model), x, labels)]}
    result.update(counts(steps, "dynets"))   # after: the steps above start from the timed steps' weights
    print(f"reference leaves residual {r}; steps (free+nudged) to reach it, after the timed steps: {used}")
    best = min((n for n in ms if n.startswith("dynets")), key=ms.get)
    return {**result, "speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"], "steps_same_residual": used,
            "dynets_best": best, "ratio_best_vs_backprop": ms[best] / ms["backprop"], "speedup_best_vs_autograd":
            ms["autograd_reference"] / ms[best], "macs_ratio_best_vs_backprop": result[f"macs_{best}"] /
            result["macs_backprop"], **{f"reference_residual_{k}": v for k, v in r.items()}}


def bench_conv(batch: int, device: torch.device, repeats: int, warmup: int) -> list[dict]:
    """Conv EP (Gauss-Seidel) and conv PC stopped at the residual the textbook conv EP leaves (checked
    first to give dynets' gradients at its steps), against it and backprop through the same couplings;
    each step's :func:`~dynets.studies.counts.counts` from one more step after the timed ones.

    Args:
        batch: rows of the batch.
        device: where it runs.
        repeats: timed steps of each method.
        warmup: untimed steps first.
    """
    x, labels = random_batch((1, 28, 28), 10, batch, device, SEED)
    ep, pc = ConvHopfield(**CONV_NET).to(device), ConvPredictiveCoding(**CONV_NET).to(device)
    ref, y = ReferenceConvEP(copy.deepcopy(ep.couplings)), ep.target(labels)
    double = lambda m: copy.deepcopy(m).double()   # checked in float64: float32 rounding moves near-tied arg-maxes
    check_same_grads(double(ep), ReferenceConvEP(double(ep.couplings)), x[:32].double(), labels[:32], 1e-8)
    r, named, results = ref.residuals(ep, x, labels), nn.ModuleDict({"couplings": ref.layers}), []
    # A check of the conv net's fused sweeps evaluates nothing (a norm and one sync, against a sweep's two
    # convolutions), so EP checks every sweep: a phase stops at the first sweep within the residual
    # (measured along this bench's steps: 6-13 free sweeps where checks placed up to 10 apart took 14-15).
    runs = {"ep": (ep, ep.couplings, ref.stopped_rule(r, "gauss_seidel", 1.0, check_every=1), nn.Hardtanh(0.0, 1.0)),
            "pc": (pc, pc.layers, PredictiveCodingRule(0.1, "nudged", gs(r["nudged"])), nn.Tanh())}
    for family, (model, couplings, rule, act) in runs.items():
        net = nn.Sequential(*[m for c in copy.deepcopy(couplings) for m in (c, act)][:-1])
        steps = {"dynets": with_adam(model.parameters(), lambda m=model, r=rule: train_step(r, m, x, labels)),
                 "backprop": backprop_step(net, x, y)}
        if family == "ep":
            steps["autograd_reference"] = with_adam(named.parameters(), lambda: write_grads(named, ref.grads(x, y)))
        else:   # PC's nudged phase starts within the reference's residual: also at 1e-2 (1e-3: > 400 sweeps)
            tight, pc2 = PredictiveCodingRule(0.1, "nudged", gs(1e-2), allow_unconverged=True), copy.deepcopy(pc)
            steps["dynets_atol_1e-2"] = with_adam(pc2.parameters(), lambda: train_step(tight, pc2, x, labels))
        result, ms = timed(f"conv_{family} mnist-cnn/b{batch}", steps, device, repeats, warmup)
        print("at 1e-2:", train_step(tight, copy.deepcopy(pc2), x, labels)) if family == "pc" else None
        used = "+".join(str(v) for k, v in train_step(rule, copy.deepcopy(model), x, labels).items() if "steps_" in k)
        print(f"{family}: steps (free+nudged) to the reference's residual {r}, after the timed steps: {used}")
        result.update(counts(steps, "dynets"))
        results.append({**result, "steps_same_residual": used, **{f"reference_residual_{k}": v for k, v in r.items()},
                        **({"speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"]} if family == "ep" else {})})
    return results

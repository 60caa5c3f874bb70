"""Time one training step of dynets' rules against backprop and the textbook autograd rule.

    python scripts/bench.py [--device cpu] [--configs 784,512,10:128 ...] [--repeats 20] [--warmup 3] [--families ep pc]

ep (centered, β 0.5, hard sigmoid; 30 Euler steps of Δt 0.5 from rest, ±β phases of 10) and pc (nudged, β 0.1,
tanh, linear read-out; 20 steps from the feedforward pass): ``dynets`` at the steps of ``autograd_reference``
(dynets.testing; checked first to give the same gradients), ``dynets_torchdiffeq``, and stopped at the residual
the reference leaves: ``dynets_adaptive`` (ep; Δt 0.5, ``_dt1``: 1), ``dynets_gauss_seidel`` (Δt 1); on GPU
``*_compiled``. The other families (CHL, implicit differentiation, node perturbation with 16 antithetic probes,
wake-sleep on a Helmholtz machine, x > 0.5, FA, DTP) on compare.yaml's nets (sigmoid, Gauss-Seidel). Each step
ends with the same fused Adam step; ``backprop``: the same-size MLP. conv: the published MNIST CNN (1x28x28, 32-64
5x5 max-pooled, fc 10, batch 128): ConvHopfield's EP (as ep, Gauss-Seidel) and the textbook conv EP (free 40, ±β
12 synchronous steps, Δt 1), ConvPredictiveCoding's PC (as pc) at the same residual, backprop through the same
couplings. The last lines: one JSON object each.
"""
import argparse
import copy
import json

import torch
from torch import nn

from dynets.models import Asymmetric, ConvHopfield, ConvPredictiveCoding, Helmholtz, LayeredHopfield, PredictiveCoding
from dynets.rules import (ContrastiveHebbian, DifferenceTargetPropagation, FeedbackAlignment, ImplicitDifferentiation,
                          NodePerturbation, PredictiveCodingRule, WakeSleep, write_grads)
from dynets.settle import SettleOptions
from dynets.studies.timing import backprop_step, timed, train_step, with_adam
from dynets.testing import ReferenceConvEP, ReferenceEP, ReferencePC, check_same_grads

CPU_CONFIGS = ["784,512,10:128", "784,1024,1024,10:128"]
GPU_CONFIGS = ["784,512,10:128", "784,512,10:1024", "784,1024,1024,10:128", "784,1024,1024,10:1024"]
PHASES, SEED, TOL = ("steps_free", "steps_nudged_+", "steps_nudged_-"), 0, 1e-3   # TOL: of the gradient check
FIXED = {"dynets": "fast_euler", "dynets_torchdiffeq": "euler", "dynets_compiled": "fast_euler"}   # *_compiled: GPU
STOPPED = {"dynets_adaptive": ("fast_euler", 0.5), "dynets_adaptive_dt1": ("fast_euler", 1.0),
           "dynets_gauss_seidel": ("gauss_seidel", 1.0), "dynets_gauss_seidel_compiled": ("gauss_seidel", 1.0)}
REFERENCES = {   # name: (model of sizes, reference, the MLP's activation, the STOPPED methods it runs)
    "ep": (lambda s: LayeredHopfield(s, "hard_sigmoid"), ReferenceEP, nn.Hardtanh(0.0, 1.0), list(STOPPED)),
    "pc": (lambda s: PredictiveCoding(s, "tanh"), ReferencePC, nn.Tanh(), ["dynets_gauss_seidel"])}
gs = lambda atol=1e-3: SettleOptions(method="gauss_seidel", step_size=1.0, atol=atol, max_time=400, check_every=5)
hopfield, asym = lambda s: LayeredHopfield(s, "sigmoid"), lambda feedback: lambda s: Asymmetric(s, feedback, "sigmoid")
FAMILIES = {   # name: (model of sizes, rule, binary inputs)
    "chl": (hopfield, lambda: ContrastiveHebbian(gs()), False),
    "implicit": (hopfield, lambda: ImplicitDifferentiation(gs()), False),
    "node_perturbation": (hopfield, lambda: NodePerturbation(0.05, 16, settle=gs(1e-5)), False),
    "wake_sleep": (Helmholtz, lambda: WakeSleep("plain"), True),
    "fa": (asym("random"), lambda: FeedbackAlignment(0.5, settle=gs()), False),
    "dtp": (asym("learned"), lambda: DifferenceTargetPropagation(0.5, reg=0.1, settle=gs()), False)}
CONV_NET = dict(in_size=28, channels=[1, 32, 64], kernels=[5, 5], strides=[1, 1], paddings=[0, 0], pools=["max"] * 2,
                fc=[10])   # the published MNIST CNN (Laborieux et al. 2021), at batch 128


def backprop(sizes, act: nn.Module, x, onehot):
    """A backprop step of the same-size feedforward net: ``act`` hidden layers, linear out, squared error."""
    mlp = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), act)][:-1]).to(x.device)
    return backprop_step(mlp, x, onehot)


def random_batch(shape, classes, batch, device, seed, binary=False):
    """Seeded inputs in [0, 1) (``binary``: x > 0.5) and labels; torch's generator seeded for the init."""
    gen = torch.Generator().manual_seed(seed)
    x, labels = torch.rand(batch, *shape, generator=gen), torch.randint(classes, (batch,), generator=gen)
    torch.manual_seed(seed)
    return (x > 0.5).float().to(device) if binary else x.to(device), labels.to(device)
def bench_reference(family, sizes, batch, device, args) -> dict:
    """EP or PC at the reference's steps and stopped at its residual, against the reference and backprop."""
    make_model, reference, act, stops = REFERENCES[family]
    x, labels = random_batch(sizes[:1], sizes[-1], batch, device, SEED)
    model = make_model(sizes).to(device)
    ref, y = reference(copy.deepcopy(model.layers)), model.target(labels)
    check_same_grads(model, ref, x, labels, TOL)   # while every copy still has the same weights
    r, cuda = ref.residuals(model, x, labels), device.type == "cuda"
    compiled = lambda name: "on" if name.endswith("_compiled") else "off"
    stopped = {n: ref.stopped_rule(r, *STOPPED[n], compiled(n)) for n in stops if cuda or compiled(n) == "off"}
    rules = {**{n: ref.rule(m, compiled(n)) for n, m in FIXED.items() if cuda or compiled(n) == "off"}, **stopped}
    steps = {name: with_adam(net.parameters(), lambda r=rule, n=net: train_step(r, n, x, labels))
             for name, rule in rules.items() for net in [model if name == "dynets" else copy.deepcopy(model)]}
    named = nn.ModuleDict({"layers": ref.layers})   # its parameters named as ref.grads names them (the model's)
    steps["autograd_reference"] = with_adam(named.parameters(), lambda: write_grads(named, ref.grads(x, y)))
    steps["backprop"] = backprop(sizes, act, x, y)
    result, ms = timed(f"{family} {'-'.join(map(str, sizes))}/b{batch}", steps, device, args.repeats, args.warmup)
    used = {n: "+".join(str(m[k]) for k in PHASES if k in m) for n, rule in stopped.items()
            for m in [train_step(rule, copy.deepcopy(model), x, labels)]}
    print(f"reference leaves residual {r}; steps (free+nudged) to reach it, after the timed steps: {used}")
    best = min((n for n in ms if n.startswith("dynets")), key=ms.get)
    return {**result, "speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"], "steps_same_residual": used,
            "dynets_best": best, "ratio_best_vs_backprop": ms[best] / ms["backprop"], "speedup_best_vs_autograd":
            ms["autograd_reference"] / ms[best], **{f"reference_residual_{k}": v for k, v in r.items()}}


def bench_family(family, sizes, batch, device, args) -> dict:
    """One step of ``family``'s rule on its standard net against backprop of the same-size MLP."""
    make_model, make_rule, binary = FAMILIES[family]
    x, labels = random_batch(sizes[:1], sizes[-1], batch, device, SEED, binary)
    model, rule = make_model(sizes).to(device), make_rule()
    steps = {family: with_adam(model.parameters(), lambda: train_step(rule, model, x, labels)),
             "backprop": backprop(sizes, nn.Sigmoid(), x, nn.functional.one_hot(labels, sizes[-1]).to(x.dtype))}
    return timed(f"{family} {'-'.join(map(str, sizes))}/b{batch}", steps, device, args.repeats, args.warmup, family)[0]


def bench_conv(batch, device, args) -> list[dict]:
    """Conv EP (Gauss-Seidel) and conv PC stopped at the residual the textbook conv EP leaves (checked
    first to give dynets' gradients at its steps), against it and backprop through the same couplings."""
    x, labels = random_batch((1, 28, 28), 10, batch, device, SEED)
    ep, pc = ConvHopfield(**CONV_NET).to(device), ConvPredictiveCoding(**CONV_NET).to(device)
    ref, y = ReferenceConvEP(copy.deepcopy(ep.couplings)), ep.target(labels)
    double = lambda m: copy.deepcopy(m).double()   # checked in float64: float32 rounding moves near-tied arg-maxes
    check_same_grads(double(ep), ReferenceConvEP(double(ep.couplings)), x[:32].double(), labels[:32], 1e-8)
    r, named, results = ref.residuals(ep, x, labels), nn.ModuleDict({"couplings": ref.layers}), []
    runs = {"ep": (ep, ep.couplings, ref.stopped_rule(r, "gauss_seidel", 1.0), nn.Hardtanh(0.0, 1.0)),
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
        result, ms = timed(f"conv_{family} mnist-cnn/b{batch}", steps, device, args.repeats, args.warmup)
        print("at 1e-2:", train_step(tight, copy.deepcopy(pc2), x, labels)) if family == "pc" else None
        used = "+".join(str(v) for k, v in train_step(rule, copy.deepcopy(model), x, labels).items() if "steps_" in k)
        print(f"{family}: steps (free+nudged) to the reference's residual {r}, after the timed steps: {used}")
        results.append({**result, "steps_same_residual": used, **{f"reference_residual_{k}": v for k, v in r.items()},
                        **({"speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"]} if family == "ep" else {})})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", help="sizes:batch, e.g. 784,512,10:128 (default: 2 on CPU, 4 on GPU)")
    parser.add_argument("--repeats", type=int, default=20), parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--families", nargs="+", choices=[*REFERENCES, *FAMILIES, "conv"],
                        default=[*REFERENCES, *FAMILIES, "conv"])
    args = parser.parse_args()
    device, results = torch.device(args.device), []
    for item in args.configs or (GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS):
        sizes, batch = [int(n) for n in item.split(":")[0].split(",")], int(item.split(":")[1])
        results += [(bench_reference if f in REFERENCES else bench_family)(f, sizes, batch, device, args)
                    for f in args.families if f != "conv"]
    results += bench_conv(128, device, args) if "conv" in args.families else []
    print("\n" + "\n".join(map(json.dumps, results)))   # the last lines: one JSON object per measurement


if __name__ == "__main__":
    main()

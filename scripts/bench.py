"""Time one training step of dynets' rules against backprop and the textbook autograd rule.

    python scripts/bench.py [--device cpu] [--configs 784,512,10:128 ...] [--repeats 20] [--warmup 3] [--families ep pc]

ep (centered, β 0.5, hard sigmoid; 30 Euler steps of Δt 0.5 from rest, ±β phases of 10) and pc (nudged, β 0.1,
tanh, linear read-out; 20 steps from the feedforward pass): ``dynets`` at the steps of ``autograd_reference``
(dynets.testing; checked first to give the same gradients), ``dynets_torchdiffeq``, and stopped at the residual
the reference leaves: ``dynets_adaptive`` (ep; Δt 0.5, ``_dt1``: 1), ``dynets_gauss_seidel`` (Δt 1); on GPU
``*_compiled``. The other families (CHL, implicit differentiation, node perturbation with 16 antithetic probes,
wake-sleep on a Helmholtz machine, x > 0.5, FA, DTP) on compare.yaml's nets (sigmoid, Gauss-Seidel). Each step
ends with the same fused Adam step; ``backprop``: the same-size MLP. The last lines: one JSON object each.
"""
import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from dynets.models import Asymmetric, Helmholtz, LayeredHopfield, PredictiveCoding
from dynets.rules import (ContrastiveHebbian, DifferenceTargetPropagation, FeedbackAlignment, ImplicitDifferentiation,
                          NodePerturbation, WakeSleep, write_grads)
from dynets.settle import SettleOptions
from dynets.testing import ReferenceEP, ReferencePC, check_same_grads

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


def train_step(rule, model, x, labels) -> dict:
    """The rule's update written to p.grad, its metrics returned: the one call of the rule API here."""
    write_grads(model, (update := rule.update(model, x, labels)).grads)
    return update.metrics


def with_adam(params, grads):
    """A timed step: ``grads()`` writes p.grad, then the fused Adam step every method shares."""
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    return lambda: (grads(), opt.step())


def backprop(sizes, act: nn.Module, x, onehot):
    """A backprop step of the same-size feedforward net: ``act`` hidden layers, linear out, squared error."""
    mlp = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), act)][:-1]).to(x.device)
    loss = lambda: 0.5 * (mlp(x) - onehot).pow(2).sum(1).mean()
    return with_adam(mlp.parameters(), lambda: (mlp.zero_grad(set_to_none=True), loss().backward()))


def random_batch(sizes, batch, device, seed, binary=False):
    """Seeded inputs in [0, 1) (``binary``: x > 0.5) and labels; torch's generator seeded for the init."""
    gen = torch.Generator().manual_seed(seed)
    x, labels = torch.rand(batch, sizes[0], generator=gen), torch.randint(sizes[-1], (batch,), generator=gen)
    torch.manual_seed(seed)
    return (x > 0.5).float().to(device) if binary else x.to(device), labels.to(device)


def timed(config: str, steps: dict, device, args, base: str = "dynets") -> tuple[dict, dict]:
    """Median ms per step of each callable (taking turns: load falls on all alike), peak CUDA MB: printed, returned."""
    cuda, peak, times = device.type == "cuda", {}, {name: [] for name in steps}
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    for name, step in steps.items():
        torch.cuda.reset_peak_memory_stats(device) if cuda else None
        for _ in range(args.warmup):
            step()
        peak.update({name: torch.cuda.max_memory_allocated(device) / 2**20} if cuda else {})
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync(), (start := time.perf_counter()), step(), sync()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(f"\n{config} on {device} ({torch.get_num_threads()} threads), median of {args.repeats}\n"
          f"{'method':<28} {'ms/step':>9} {'x ' + base[:7]:>9} {'peak MB':>9}")
    for name, t in ms.items():
        print(f"{name:<28} {t:9.2f} {t / ms[base]:9.2f} {peak.get(name, float('nan')):9.1f}")
    return {"device": str(device), "threads": torch.get_num_threads(), "config": config,
            **{f"ms_{name}": t for name, t in ms.items()}, **{f"peak_mb_{name}": mb for name, mb in peak.items()},
            "ratio_vs_backprop": ms[base] / ms["backprop"]}, ms


def bench_reference(family, sizes, batch, device, args) -> dict:
    """EP or PC at the reference's steps and stopped at its residual, against the reference and backprop."""
    make_model, reference, act, stops = REFERENCES[family]
    x, labels = random_batch(sizes, batch, device, SEED)
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
    result, ms = timed(f"{family} {'-'.join(map(str, sizes))}/b{batch}", steps, device, args)
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
    x, labels = random_batch(sizes, batch, device, SEED, binary)
    model, rule = make_model(sizes).to(device), make_rule()
    steps = {family: with_adam(model.parameters(), lambda: train_step(rule, model, x, labels)),
             "backprop": backprop(sizes, nn.Sigmoid(), x, nn.functional.one_hot(labels, sizes[-1]).to(x.dtype))}
    return timed(f"{family} {'-'.join(map(str, sizes))}/b{batch}", steps, device, args, family)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", help="sizes:batch, e.g. 784,512,10:128 (default: 2 on CPU, 4 on GPU)")
    parser.add_argument("--repeats", type=int, default=20), parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--families", nargs="+", choices=[*REFERENCES, *FAMILIES], default=[*REFERENCES, *FAMILIES])
    args = parser.parse_args()
    device, results = torch.device(args.device), []
    for item in args.configs or (GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS):
        sizes, batch = [int(n) for n in item.split(":")[0].split(",")], int(item.split(":")[1])
        results += [(bench_reference if f in REFERENCES else bench_family)(f, sizes, batch, device, args)
                    for f in args.families]
    print("\n" + "\n".join(map(json.dumps, results)))   # the last lines: one JSON object per measurement


if __name__ == "__main__":
    main()

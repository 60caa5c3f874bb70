"""Time one centered-EP training step of dynets against the textbook autograd EP and backprop.

    python scripts/bench.py [--device cpu] [--configs 784,512,10:128 ...] [--repeats 20]

One step = free phase (T1 = 30 Euler steps from rest) + nudged phases at +β and −β
(T2 = 10 steps each, warm-started from the free state) + writing p.grad + Adam step, on a
layered Hopfield net (hard sigmoid), fp32, random inputs in [0, 1] and random labels.
Every method steps the same optimizer, torch's fused Adam (4x faster than the default
on CPU).

  dynets               EquilibriumPropagation, analytic vector field, fast_euler, 30+2x10 steps
  dynets_torchdiffeq   the same, settled through torchdiffeq's euler
  dynets_adaptive      fast_euler, dt 0.5, each phase stopped as soon as every sample is
                       within the residual the reference leaves after its fixed steps
  dynets_adaptive_dt1  the same with dt 1 (the plain fixed-point iteration s <- ρ(∂Φ/∂s))
  dynets_gauss_seidel  the same with red-black Gauss-Seidel sweeps, dt 1 (even layers, then
                       odd ones from the new evens): same fixed points, about half the steps
  dynets_compiled      (GPU only) the Euler step compiled with torch.compile
  dynets_gauss_seidel_compiled  (GPU only) dynets_gauss_seidel with the sweep compiled
  autograd_reference   EP as published EP code writes it: dΦ/ds by autograd at every step
  backprop             one backprop step of the same-size feedforward MLP

Before timing, the script checks that the reference and dynets write the same p.grad
from the same weights and batch, and aborts if not: the comparison is only fair if both
compute the same thing. Timings are medians over --repeats steps after --warmup steps,
the methods taking turns. It also prints steps-to-converge vs width. The last lines of
output are one JSON object per configuration.

Predictive coding (``--family pc``; ``all`` runs both): one PredictiveCodingRule step
(nudged, β = 0.1) on a tanh net with a linear read-out: the value nodes start at the
feedforward pass (the free equilibrium), then PC_T = 20 Euler steps of Δt = 0.5 of the
nudged phase, the closed-form update, fused Adam. Same check of p.grad first.

  dynets               PredictiveCodingRule, analytic vector field, fast_euler, 20 steps
  dynets_torchdiffeq   the same through torchdiffeq's euler
  dynets_gauss_seidel  Gauss-Seidel sweeps at dt 1, stopped at the reference's residual
  autograd_reference   textbook PC: ∂F/∂s by autograd at every step (every prediction,
                       W_1 x included, recomputed), then ∂F/∂θ by autograd
  backprop             one backprop step of the same feedforward net (tanh, linear out)
"""
from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import statistics
import time
from typing import Callable

import torch
from torch import nn

from dynets.models import LayeredHopfield, PredictiveCoding
from dynets.rules import EquilibriumPropagation, PredictiveCodingRule
from dynets import Condition
from dynets.settle import SettleOptions, residual_norm

T1, T2, DT, BETA, LR = 30, 10, 0.5, 0.5, 1e-3
FAST_METHODS = (("fast_euler", DT), ("gauss_seidel", 1.0))   # dynets' own loops, each at its step size
CPU_CONFIGS = ["784,512,10:128", "784,1024,1024,10:128"]
GPU_CONFIGS = ["784,512,10:128", "784,512,10:1024", "784,1024,1024,10:128", "784,1024,1024,10:1024"]


def ep_rule(method: str, compile: str = "off") -> EquilibriumPropagation:
    # atol=0 never stops early, so every settle runs exactly its fixed number of steps;
    # check_every = the step count leaves only the start and end residual checks.
    free = SettleOptions(method=method, step_size=DT, atol=0.0, max_time=T1 * DT, check_every=T1, compile=compile)
    nudged = SettleOptions(method=method, step_size=DT, atol=0.0, max_time=T2 * DT, check_every=T2, compile=compile)
    return EquilibriumPropagation(beta=BETA, variant="centered", settle=free, nudged_settle=nudged)


class ReferenceEP:
    """Textbook EP (the style of Laborieux et al. 2021's code): states carry requires_grad
    and every Euler step takes dΦ/ds by autograd, rebuilding the input drive each time."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers

    def phi(self, x, states, y, beta):
        """Φ = Σ_l s_{l+1}·W_l(s_l) − β·½‖s_L − y‖², summed over the batch."""
        below = [x, *states[:-1]]
        phi = sum((s * layer(b)).sum() for s, layer, b in zip(states, self.layers, below))
        return phi - beta * 0.5 * (states[-1] - y).pow(2).sum()

    def settle(self, x, y, states, beta, steps):
        for _ in range(steps):
            states = [s.detach().requires_grad_() for s in states]
            grads = torch.autograd.grad(self.phi(x, states, y, beta), states)
            states = [s + DT * (-s + g.clamp(0.0, 1.0)) for s, g in zip(states, grads)]
        return [s.detach() for s in states]

    def grads(self, x, y):
        """p.grad = −[∂Φ/∂θ(s⁺) − ∂Φ/∂θ(s⁻)] / (2β) / batch."""
        zeros = [x.new_zeros(x.shape[0], layer.out_features) for layer in self.layers]
        free = self.settle(x, y, zeros, 0.0, T1)
        plus = self.settle(x, y, free, BETA, T2)
        minus = self.settle(x, y, free, -BETA, T2)
        for p in self.layers.parameters():
            p.grad = None
        delta = (self.phi(x, plus, y, BETA) - self.phi(x, minus, y, -BETA)) / (2 * BETA)
        (-delta / x.shape[0]).backward()


def check_same_grads(model, reference, x, labels, tol):
    """Abort unless both EP implementations (and both dynets solvers) write the same p.grad."""
    reference.grads(x, model.target(labels))
    want = [p.grad.clone() for p in reference.layers.parameters()]
    for method in ("fast_euler", "euler"):
        ep_rule(method).grads(model, x, labels)
        for (name, p), w in zip(model.named_parameters(), want):
            err = (p.grad - w).abs().max().item() / w.abs().max().item()
            if not err <= tol:
                raise SystemExit(f"ABORT: dynets ({method}) and the autograd reference disagree on "
                                 f"{name}.grad: max |diff| / max |grad| = {err:.2e} > {tol:g}")


def optimizer_step(params, grads) -> Callable[[], None]:
    """A training step: ``grads()`` writes p.grad, then the fused Adam step every method shares."""
    opt = torch.optim.Adam(params, lr=LR, fused=True)
    return lambda: (grads(), opt.step())


def rule_step(rule, net, *, x, labels) -> Callable[[], None]:
    """A training step of a dynets rule on ``net``."""
    return optimizer_step(net.parameters(), lambda: rule.grads(net, x, labels))


def mlp_step(mlp, x, onehot) -> Callable[[], None]:
    """A backprop step of the same-size feedforward net (squared error)."""
    def grads():
        mlp.zero_grad(set_to_none=True)
        (0.5 * (mlp(x) - onehot).pow(2).sum(1).mean()).backward()
    return optimizer_step(mlp.parameters(), grads)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(steps: dict, device, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Median wall time per step of each callable, in ms; peak CUDA memory in MB (GPU only)."""
    peak = {}
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**20
    times = {name: [] for name in steps}
    # Round-robin over the methods so that load from other processes on a shared
    # machine falls on all of them alike instead of skewing one method's block.
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}, peak


def reference_residuals(model, reference, x, labels) -> tuple[float, float]:
    """Worst residual ‖ds/dt‖ the reference leaves after its fixed free / nudged steps."""
    onehot = model.target(labels)
    zeros = [x.new_zeros(x.shape[0], layer.out_features) for layer in reference.layers]
    free = reference.settle(x, onehot, zeros, 0.0, T1)
    c = Condition(x, onehot)
    r_free = residual_norm(model.vector_field(None, tuple(free), c)).max().item()
    r_nudged = max(residual_norm(model.vector_field(None, tuple(reference.settle(x, onehot, free, b, T2)),
                                                    c.nudged(b))).max().item() for b in (BETA, -BETA))
    return r_free, r_nudged


def adaptive_rule(method: str, step_size: float, r_free: float, r_nudged: float,
                  compile: str = "off") -> EquilibriumPropagation:
    """EP that stops each phase as soon as every sample is within the reference's residual."""
    free = SettleOptions(method=method, step_size=step_size, atol=r_free, max_time=200, compile=compile)
    nudged = SettleOptions(method=method, step_size=step_size, atol=r_nudged, max_time=200, compile=compile)
    return EquilibriumPropagation(beta=BETA, variant="centered", settle=free, nudged_settle=nudged)


def random_batch(sizes, batch, device, seed) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of inputs in [0, 1) and labels; torch's generator seeded for the init."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, sizes[0], generator=gen).to(device)
    labels = torch.randint(sizes[-1], (batch,), generator=gen).to(device)
    torch.manual_seed(seed)
    return x, labels


def bench_config(sizes, batch, device, args) -> dict:
    """Time every implementation on one network size and batch; return the figures."""
    x, labels = random_batch(sizes, batch, device, args.seed)
    # Each method trains its own copy of the same initial weights; the check runs
    # first, while the weights are still identical.
    model = LayeredHopfield(sizes, "hard_sigmoid").to(device)
    reference = ReferenceEP(copy.deepcopy(model.layers))
    check_same_grads(model, reference, x, labels, args.tol)
    r_free, r_nudged = reference_residuals(model, reference, x, labels)
    onehot = model.target(labels)
    # Same-size feedforward net: hard-sigmoid hidden layers, linear output.
    mlp = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.Hardtanh(0.0, 1.0))][:-1])
    mlp = mlp.to(device)

    ep_step = functools.partial(rule_step, x=x, labels=labels)
    reference_step = functools.partial(optimizer_step, reference.layers.parameters(), lambda: reference.grads(x, onehot))
    backprop_step = functools.partial(mlp_step, mlp, x, onehot)

    adaptive = {"dynets_adaptive": adaptive_rule("fast_euler", DT, r_free, r_nudged),
                "dynets_adaptive_dt1": adaptive_rule("fast_euler", 1.0, r_free, r_nudged),
                "dynets_gauss_seidel": adaptive_rule("gauss_seidel", 1.0, r_free, r_nudged)}
    steps = {"dynets": ep_step(ep_rule("fast_euler"), model),
             "dynets_torchdiffeq": ep_step(ep_rule("euler"), copy.deepcopy(model)),
             **{name: ep_step(rule, copy.deepcopy(model)) for name, rule in adaptive.items()},
             "autograd_reference": reference_step(), "backprop": backprop_step()}
    if device.type == "cuda":
        steps["dynets_compiled"] = ep_step(ep_rule("fast_euler", compile="on"), copy.deepcopy(model))
        steps["dynets_gauss_seidel_compiled"] = ep_step(
            adaptive_rule("gauss_seidel", 1.0, r_free, r_nudged, compile="on"), copy.deepcopy(model))
    ms, peak = median_ms(steps, device, args.warmup, args.repeats)
    # Steps each adaptive method takes after the timed steps, i.e. on partly trained weights.
    used = {}
    for name, rule in adaptive.items():
        m = rule.grads(copy.deepcopy(model), x, labels)
        used[name] = "+".join(str(m[k]) for k in ("steps_free", "steps_nudged_+", "steps_nudged_-"))

    best = min((name for name in ms if name.startswith("dynets")), key=ms.get)
    config = f"{'-'.join(map(str, sizes))}/b{batch}/T{T1}+2x{T2}"
    print(f"\n{config} on {device} ({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"reference leaves residual {r_free:.2e} (free) / {r_nudged:.2e} (nudged); the adaptive "
          f"methods stop there, steps free+nudged: " + ", ".join(f"{k} {v}" for k, v in used.items()))
    width = max(map(len, ms))
    print(f"{'method':<{width}} {'ms/step':>9} {'x dynets':>9} {'peak MB':>9}")
    for name, t in ms.items():
        print(f"{name:<{width}} {t:9.2f} {t / ms['dynets']:9.2f} {peak.get(name, float('nan')):9.1f}")
    return {
        "device": str(device), "threads": torch.get_num_threads(), "config": config,
        **{f"ms_{name}": t for name, t in ms.items()},
        "speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"],
        "speedup_vs_autograd_same_residual": ms["autograd_reference"] / ms["dynets_adaptive"],
        "speedup_vs_autograd_same_residual_dt1": ms["autograd_reference"] / ms["dynets_adaptive_dt1"],
        "speedup_vs_autograd_same_residual_gauss_seidel": ms["autograd_reference"] / ms["dynets_gauss_seidel"],
        "steps_same_residual": used,
        "ratio_vs_backprop": ms["dynets"] / ms["backprop"],
        "dynets_best": best, "ms_dynets_best": ms[best], "ratio_best_vs_backprop": ms[best] / ms["backprop"],
        "speedup_best_vs_autograd": ms["autograd_reference"] / ms[best],
        "reference_residual_free": r_free, "reference_residual_nudged": r_nudged,
        **{f"peak_mb_{name}": mb for name, mb in peak.items()},
    }


def steps_vs_width(device, widths, batch, atol) -> list[dict]:
    """Free and nudged steps to reach ``atol`` on 784-w-10 at init: Euler (dt 0.5) and
    Gauss-Seidel (dt 1)."""
    rows = []
    for method, dt in FAST_METHODS:
        for width in widths:
            torch.manual_seed(0)
            model = LayeredHopfield([784, width, 10]).to(device)
            x, labels = torch.rand(batch, 784, device=device), torch.randint(10, (batch,), device=device)
            opts = SettleOptions(method=method, step_size=dt, atol=atol, max_time=500)
            metrics = EquilibriumPropagation(BETA, "centered", opts).grads(model, x, labels)
            rows.append({"method": method, "width": width,
                         **{k: metrics[k] for k in ("steps_free", "steps_nudged_+", "steps_nudged_-")}})
    print(f"\nsteps to ‖ds/dt‖ <= {atol:g} vs width (784-w-10, batch {batch}, at init)")
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return rows


def stop_overshoot(device) -> dict:
    """Steps of the adaptive stop (check_every 20) over the fewest that reach the tolerance
    (a check after every step), over nets × weight scales × tolerances × the three phases."""
    nets = [[784, 512, 10], [64, 256, 10], [30, 100, 100, 100, 5], [784, 1024, 1024, 10]]
    worst = {}
    for method, dt in FAST_METHODS:
        ratios = []
        for sizes, scale, atol in itertools.product(nets, (0.5, 1.0, 2.0, 3.0), (1e-3, 1e-4)):
            torch.manual_seed(0)
            model = LayeredHopfield(sizes).to(device)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(scale)
            x, labels = torch.rand(64, sizes[0], device=device), torch.randint(sizes[-1], (64,), device=device)
            c = Condition(x, model.target(labels))
            every, sparse = (SettleOptions(method=method, step_size=dt, atol=atol, max_time=500, check_every=k)
                             for k in (1, 20))
            free = every(model, c)
            for cond, init in ((c, None), (c.nudged(BETA), free.state), (c.nudged(-BETA), free.state)):
                a, b = every(model, cond, init), sparse(model, cond, init)
                if free.converged and a.converged and b.converged:   # fp32 stalls above 1e-4 at scale 3
                    ratios.append((b.steps / max(a.steps, 1), f"{'-'.join(map(str, sizes))} x{scale} "
                                   f"atol {atol:g} β {cond.beta:+g}: {b.steps} vs {a.steps} steps"))
        ratios.sort(reverse=True)
        within = sum(r <= 1.2 for r, _ in ratios)
        print(f"\nadaptive stop, {method}: {within}/{len(ratios)} phases within 1.2x of the fewest steps; "
              f"worst {ratios[0][0]:.2f}x ({ratios[0][1]})")
        worst[method] = {"phases": len(ratios), "within_1.2x": within, "worst_ratio": ratios[0][0]}
    return worst


PC_T, PC_DT, PC_BETA = 20, 0.5, 0.1


def pc_rule(method: str, step_size: float = PC_DT, atol: float = 0.0, compile: str = "off") -> PredictiveCodingRule:
    """PC with a fixed budget of PC_T steps (atol = 0), or stopped at ``atol``. The free
    phase starts at its equilibrium (the feedforward pass) and takes no step."""
    budget = PC_T * step_size if atol == 0.0 else 200.0
    opts = SettleOptions(method=method, step_size=step_size, atol=atol, max_time=budget, check_every=PC_T,
                         compile=compile)
    return PredictiveCodingRule(PC_BETA, "nudged", opts)


class ReferencePC:
    """Textbook predictive coding (Whittington & Bogacz 2017): value nodes start at the
    feedforward pass; every Euler step of the nudged phase takes ∂F/∂s by autograd of
    F = Σ ½‖s_l − μ_l‖² + β·½‖s_L − y‖², recomputing every prediction; the update is
    ∂F/∂θ by autograd at the end, / (β·batch)."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers

    def energy(self, x, states, y):
        below = [x, *[torch.tanh(s) for s in states[:-1]]]
        errors = sum(0.5 * (s - layer(b)).pow(2).sum() for s, layer, b in zip(states, self.layers, below))
        return errors + PC_BETA * 0.5 * (states[-1] - y).pow(2).sum()

    def settle(self, x, y):
        with torch.no_grad():
            states = [self.layers[0](x)]
            for layer in self.layers[1:]:
                states.append(layer(torch.tanh(states[-1])))
        for _ in range(PC_T):
            states = [s.detach().requires_grad_() for s in states]
            grads = torch.autograd.grad(self.energy(x, states, y), states)
            states = [s - PC_DT * g for s, g in zip(states, grads)]
        return tuple(s.detach() for s in states)

    def grads(self, x, y):
        states = self.settle(x, y)
        for p in self.layers.parameters():
            p.grad = None
        (self.energy(x, states, y) / (PC_BETA * x.shape[0])).backward()


def check_same_pc_grads(model, reference, x, labels, tol):
    """Abort unless the textbook PC and dynets (both solvers) write the same p.grad."""
    reference.grads(x, model.target(labels))
    want = [p.grad.clone() for p in reference.layers.parameters()]
    for method in ("fast_euler", "euler"):
        pc_rule(method).grads(model, x, labels)
        for (name, p), w in zip(model.named_parameters(), want, strict=True):
            err = (p.grad - w).abs().max().item() / w.abs().max().item()
            if not err <= tol:
                raise SystemExit(f"ABORT: dynets PC ({method}) and the autograd reference disagree on "
                                 f"{name}.grad: max |diff| / max |grad| = {err:.2e} > {tol:g}")


def bench_pc(sizes, batch, device, args) -> dict:
    """Time one predictive coding step of every implementation; return the figures."""
    x, labels = random_batch(sizes, batch, device, args.seed)
    model = PredictiveCoding(sizes, "tanh").to(device)
    reference = ReferencePC(copy.deepcopy(model.layers))
    check_same_pc_grads(model, reference, x, labels, args.tol)
    onehot = model.target(labels)
    nudged = model.prepare(Condition(x, onehot, PC_BETA))
    r_ref = residual_norm(model.vector_field(None, reference.settle(x, onehot), nudged)).max().item()
    mlp = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.Tanh())][:-1]).to(device)

    pc_step = functools.partial(rule_step, x=x, labels=labels)
    reference_step = functools.partial(optimizer_step, reference.layers.parameters(), lambda: reference.grads(x, onehot))
    backprop_step = functools.partial(mlp_step, mlp, x, onehot)

    gauss_seidel = pc_rule("gauss_seidel", 1.0, atol=r_ref)
    steps = {"dynets": pc_step(pc_rule("fast_euler"), model),
             "dynets_torchdiffeq": pc_step(pc_rule("euler"), copy.deepcopy(model)),
             "dynets_gauss_seidel": pc_step(gauss_seidel, copy.deepcopy(model)),
             "autograd_reference": reference_step(), "backprop": backprop_step()}
    if device.type == "cuda":
        steps["dynets_compiled"] = pc_step(pc_rule("fast_euler", compile="on"), copy.deepcopy(model))
    ms, peak = median_ms(steps, device, args.warmup, args.repeats)
    sweeps = gauss_seidel.grads(copy.deepcopy(model), x, labels)["steps_nudged_+"]
    config = f"PC {'-'.join(map(str, sizes))}/b{batch}/T{PC_T}"
    print(f"\n{config} on {device} ({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"reference leaves residual {r_ref:.2e}; Gauss-Seidel reaches it in {sweeps} sweeps")
    width = max(map(len, ms))
    print(f"{'method':<{width}} {'ms/step':>9} {'x dynets':>9} {'peak MB':>9}")
    for name, t in ms.items():
        print(f"{name:<{width}} {t:9.2f} {t / ms['dynets']:9.2f} {peak.get(name, float('nan')):9.1f}")
    best = min((name for name in ms if name.startswith("dynets")), key=ms.get)
    return {
        "device": str(device), "threads": torch.get_num_threads(), "config": config,
        **{f"ms_{name}": t for name, t in ms.items()},
        "speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"],
        "ratio_vs_backprop": ms["dynets"] / ms["backprop"],
        "dynets_best": best, "speedup_best_vs_autograd": ms["autograd_reference"] / ms[best],
        "ratio_best_vs_backprop": ms[best] / ms["backprop"],
        "reference_residual": r_ref, "gauss_seidel_sweeps": sweeps,
        **{f"peak_mb_{name}": mb for name, mb in peak.items()},
    }


def nudged_sweeps(device, betas=(0.5, 1.0, 1.5, 2.0, -0.5, -1.0, -2.0)) -> dict:
    """Steps of a nudged phase from the free equilibrium vs β: 64-64-10 at init, 256 digits,
    atol 1e-4, max_time 200; Gauss–Seidel (Δt 1, exact nudged top layer) and fast_euler (Δt 0.5)."""
    from dynets.data import digits

    torch.manual_seed(0)
    model = LayeredHopfield([64, 64, 10]).to(device)
    data = digits().train
    c = model.prepare(Condition(data.x[:256].to(device), model.target(data.y[:256].to(device))))
    methods = {"gauss_seidel": 1.0, "fast_euler": 0.5}
    out = {}
    print("\nsteps of a nudged phase vs beta (64-64-10 at init, 256 digits, atol 1e-4, max_time 200)")
    for method, dt in methods.items():
        opts = SettleOptions(method=method, step_size=dt, atol=1e-4, max_time=200)
        free = opts(model, c)
        for beta in betas:
            eq = opts(model, c.nudged(beta), init=free.state)
            out[f"{method}_beta{beta:+g}"] = eq.steps if eq.converged else None
            print(f"  method={method}  beta={beta:+g}  steps={eq.steps}  converged={eq.converged_fraction:.3f}")
    return out


def negative_phase_curvature(device, beta: float = 0.5, slow: int = 30) -> dict:
    """Why some −β phases crawl: the main job's net (64-256-10, centered EP β = 0.5, Adam
    2e-3, batch 32) after 3 epochs on digits; per training sample, the Gauss–Seidel sweeps
    of the −β phase from the free state, and the smallest eigenvalue of F_{−β}'s Hessian
    [[I, −W₁ᵀ], [−W₁, (1 − β)I]] over the units strictly inside (0, 1) at the free state."""
    from dynets.data import digits

    torch.manual_seed(0)
    data, model = digits(), LayeredHopfield([64, 256, 10]).to(device)
    opts = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=400)
    rule, opt = EquilibriumPropagation(beta, settle=opts), torch.optim.Adam(model.parameters(), 2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(3):
        for x, y in data.train.batches(32, shuffle=True, generator=order):
            rule.grads(model, x.to(device), y.to(device))
            opt.step()
    c = model.prepare(Condition(data.train.x.to(device), model.target(data.train.y.to(device))))
    free = opts(model, c)
    one = SettleOptions(method="gauss_seidel", step_size=1.0, atol=0.0, max_time=1)
    state, sweeps = free.state, torch.full((len(data.train),), -1)
    for k in range(400):
        eq = one(model, c.nudged(-beta), init=state)
        sweeps[(eq.residual.cpu() <= 1e-3) & (sweeps < 0)] = k
        state = eq.state
    w = model.layers[1].weight.detach().cpu()

    def smallest_eigenvalue(i: int) -> float:
        h, o = (s[i].cpu() for s in free.state)
        ih, io = ((h > 0) & (h < 1)).nonzero().flatten(), ((o > 0) & (o < 1)).nonzero().flatten()
        coupling = w[io][:, ih]
        hessian = torch.eye(len(ih) + len(io))
        hessian[len(ih):, :len(ih)], hessian[:len(ih), len(ih):] = -coupling, -coupling.T
        hessian[len(ih):, len(ih):] -= beta * torch.eye(len(io))
        return torch.linalg.eigvalsh(hessian).min().item()

    crawl = (sweeps > slow).nonzero().flatten().tolist()
    rest = [smallest_eigenvalue(i) for i in (sweeps <= slow).nonzero().flatten().tolist()[:200]]
    eig = [smallest_eigenvalue(i) for i in crawl]
    print(f"\n-beta phase after 3 epochs: {len(crawl)} of {len(sweeps)} samples need > {slow} sweeps "
          f"(max {int(sweeps.max())}); smallest Hessian eigenvalue there: {min(eig):.3f} .. {max(eig):.3f}; "
          f"median for 200 others: {statistics.median(rest):.3f}")
    return {"samples_slow": len(crawl), "max_sweeps": int(sweeps.max()), "eig_slow_min": min(eig),
            "eig_slow_max": max(eig), "eig_others_median": statistics.median(rest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="sizes:batch items, e.g. 784,512,10:128 (default: two on CPU, four on GPU)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="max |grad diff| relative to max |grad| allowed in the check (fp32 rounding can flip a unit at the clip in deep nets)")
    parser.add_argument("--widths", default="128,256,512,1024,2048", help="for steps vs width; '' skips it")
    parser.add_argument("--family", choices=("all", "ep", "pc"), default="all",
                        help="which rules to time: EP (with the width and stop studies), PC, or both")
    parser.add_argument("--betas", action="store_true",
                        help="also count the steps of nudged phases for beta = ±0.5 ... ±2 (a few seconds)")
    parser.add_argument("--curvature", action="store_true",
                        help="also measure why some -beta phases crawl (the curvature of F at the free state)")
    parser.add_argument("--stops", action="store_true",
                        help="also measure the adaptive stop against the fewest steps (~1 min on CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = args.configs or (GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS)
    results = []
    for item in configs:
        sizes, batch = item.split(":")
        for family, bench in (("ep", bench_config), ("pc", bench_pc)):
            if args.family in ("all", family):
                results.append(bench([int(n) for n in sizes.split(",")], int(batch), device, args))
    if args.widths and args.family != "pc":
        steps_vs_width(device, [int(w) for w in args.widths.split(",")], 128, 1e-4)
    if args.betas and args.family != "pc":
        results.append({"device": str(device), "config": "nudged_steps_vs_beta", **nudged_sweeps(device)})
    if args.curvature and args.family != "pc":
        results.append({"device": str(device), "config": "negative_phase_curvature", **negative_phase_curvature(device)})
    if args.stops and args.family != "pc":
        results.append({"device": str(device), "config": "adaptive_stop_vs_fewest_steps", **stop_overshoot(device)})
    print()
    for result in results:   # the last lines: one JSON object per configuration
        print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Time one centered-EP training step of dynets against the textbook autograd EP and backprop.

    python scripts/bench.py [--device cpu] [--sizes 784,512,10] [--batch 128] [--repeats 20]

One step = free phase (T1 = 30 Euler steps from rest) + nudged phases at +β and −β
(T2 = 10 steps each, warm-started from the free state) + writing p.grad + Adam step, on a
layered Hopfield net (hard sigmoid), fp32, random inputs in [0, 1] and random labels.

  dynets               EquilibriumPropagation with the analytic vector field (fast_euler)
  dynets_torchdiffeq   the same, settled through torchdiffeq's euler
  autograd_reference   EP as published EP code writes it: dΦ/ds by autograd at every step
  backprop             one backprop step of the same-size feedforward MLP

Before timing, the script checks that the reference and dynets write the same p.grad
from the same weights and batch, and aborts if not: the comparison is only fair if both
compute the same thing. Timings are the median over --repeats steps after --warmup steps.
The last line of output is one JSON object with the results.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation
from dynets.settle import SettleOptions

T1, T2, DT, BETA, LR = 30, 10, 0.5, 0.5, 1e-3


def ep_rule(method: str) -> EquilibriumPropagation:
    # atol=0 never stops early, so every settle runs exactly its fixed number of steps;
    # check_every = the step count leaves only the start and end residual checks.
    free = SettleOptions(method=method, step_size=DT, atol=0.0, max_time=T1 * DT, check_every=T1)
    nudged = SettleOptions(method=method, step_size=DT, atol=0.0, max_time=T2 * DT, check_every=T2)
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(steps: dict, device, warmup: int, repeats: int) -> dict:
    """Median wall time per step of each callable, in ms."""
    for step in steps.values():
        for _ in range(warmup):
            step()
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
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="784,512,10", help="layer sizes, input first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5,
                        help="max |grad diff| relative to max |grad| allowed in the check")
    args = parser.parse_args()
    device, sizes = torch.device(args.device), [int(n) for n in args.sizes.split(",")]

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, sizes[0], generator=gen).to(device)
    labels = torch.randint(sizes[-1], (args.batch,), generator=gen).to(device)
    torch.manual_seed(args.seed)

    # Each method trains its own copy of the same initial weights; the check runs
    # first, while the weights are still identical.
    model = LayeredHopfield(sizes, "hard_sigmoid").to(device)
    reference = ReferenceEP(copy.deepcopy(model.layers))
    check_same_grads(model, reference, x, labels, args.tol)
    onehot = model.target(labels)

    torchdiffeq_model = copy.deepcopy(model)
    # Same-size feedforward net: hard-sigmoid hidden layers, linear output.
    mlp = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.Hardtanh(0.0, 1.0))][:-1])
    mlp = mlp.to(device)

    def ep_step(rule, net):
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        return lambda: (rule.grads(net, x, labels), opt.step())

    def reference_step():
        opt = torch.optim.Adam(reference.layers.parameters(), lr=LR)
        return lambda: (reference.grads(x, onehot), opt.step())

    def backprop_step():
        opt = torch.optim.Adam(mlp.parameters(), lr=LR)

        def step():
            opt.zero_grad(set_to_none=True)
            (0.5 * (mlp(x) - onehot).pow(2).sum(1).mean()).backward()
            opt.step()
        return step

    steps = {"dynets": ep_step(ep_rule("fast_euler"), model),
             "dynets_torchdiffeq": ep_step(ep_rule("euler"), torchdiffeq_model),
             "autograd_reference": reference_step(), "backprop": backprop_step()}
    ms = median_ms(steps, device, args.warmup, args.repeats)

    config = f"{'-'.join(map(str, sizes))}/b{args.batch}/T{T1}+2x{T2}"
    print(f"{config} on {device} ({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"{'method':<20} {'ms/step':>9} {'x dynets':>9}")
    for name, t in ms.items():
        print(f"{name:<20} {t:9.2f} {t / ms['dynets']:9.2f}")
    print(json.dumps({
        "device": str(device), "threads": torch.get_num_threads(), "config": config,
        "ms_dynets": ms["dynets"], "ms_dynets_torchdiffeq": ms["dynets_torchdiffeq"],
        "ms_autograd_reference": ms["autograd_reference"], "ms_backprop": ms["backprop"],
        "speedup_vs_autograd": ms["autograd_reference"] / ms["dynets"],
        "ratio_vs_backprop": ms["dynets"] / ms["backprop"],
    }))


if __name__ == "__main__":
    main()

"""How many steps a settle takes, and why: EP's phases on layered Hopfield nets against
the width, the adaptive stop against the fewest steps, nudged phases against β, and the
curvature behind the −β phases that crawl. Hydra-free: ``scripts/settling.py`` is the
entry point. Each study returns its figures and reports a line per result to ``progress``."""
from __future__ import annotations

import itertools
import statistics
from typing import Callable

import torch

from ..data import digits
from ..models import LayeredHopfield
from ..phases import Condition
from ..rules import EquilibriumPropagation, write_grads
from ..settle import SettleOptions

BETA = 0.5
FAST_METHODS = (("fast_euler", 0.5), ("gauss_seidel", 1.0))   # dynets' own loops, each at its step size
PHASES = ("steps_free", "steps_nudged_+", "steps_nudged_-")


def steps_vs_width(device, widths, batch: int = 128, atol: float = 1e-4,
                   progress: Callable[[str], None] = print) -> list[dict]:
    """Free and nudged steps of centered EP (β = 0.5) to reach ``atol`` on 784-w-10 at init,
    random inputs: Euler (Δt 0.5) and Gauss–Seidel (Δt 1)."""
    rows = []
    for method, dt in FAST_METHODS:
        for width in widths:
            torch.manual_seed(0)
            model = LayeredHopfield([784, width, 10]).to(device)
            x, labels = torch.rand(batch, 784, device=device), torch.randint(10, (batch,), device=device)
            opts = SettleOptions(method=method, step_size=dt, atol=atol, max_time=500)
            metrics = EquilibriumPropagation(BETA, "centered", opts).update(model, x, labels).metrics
            rows.append({"method": method, "width": width, **{k: metrics[k] for k in PHASES}})
    progress(f"steps to ‖ds/dt‖ <= {atol:g} vs width (784-w-10, batch {batch}, at init)")
    for row in rows:
        progress("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return rows


def _overshoots(method: str, dt: float, sizes: list[int], scale: float, atol: float, device) -> list[tuple]:
    """(steps with a check every 20 / fewest steps, description) of the three EP phases on
    ``sizes`` at init with the weights times ``scale``; phases that do not converge are left out."""
    torch.manual_seed(0)
    model = LayeredHopfield(sizes).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x, labels = torch.rand(64, sizes[0], device=device), torch.randint(sizes[-1], (64,), device=device)
    c = Condition(x, model.target(labels))
    every, sparse = (SettleOptions(method=method, step_size=dt, atol=atol, max_time=500, check_every=k) for k in (1, 20))
    free, out = every(model, c), []
    for cond, init in ((c, None), (c.nudged(BETA), free.state), (c.nudged(-BETA), free.state)):
        a, b = every(model, cond, init), sparse(model, cond, init)
        if free.converged and a.converged and b.converged:   # fp32 stalls above 1e-4 at scale 3
            out.append((b.steps / max(a.steps, 1), f"{'-'.join(map(str, sizes))} x{scale} "
                        f"atol {atol:g} β {cond.beta:+g}: {b.steps} vs {a.steps} steps"))
    return out


def stop_overshoot(device, progress: Callable[[str], None] = print) -> dict:
    """Steps of the adaptive stop (check_every 20) over the fewest that reach the tolerance
    (a check after every step), over nets × weight scales × tolerances × the three phases."""
    nets = [[784, 512, 10], [64, 256, 10], [30, 100, 100, 100, 5], [784, 1024, 1024, 10]]
    worst = {}
    for method, dt in FAST_METHODS:
        ratios = sorted((r for sizes, scale, atol in itertools.product(nets, (0.5, 1.0, 2.0, 3.0), (1e-3, 1e-4))
                         for r in _overshoots(method, dt, sizes, scale, atol, device)), reverse=True)
        within = sum(r <= 1.2 for r, _ in ratios)
        progress(f"adaptive stop, {method}: {within}/{len(ratios)} phases within 1.2x of the fewest steps; "
                 f"worst {ratios[0][0]:.2f}x ({ratios[0][1]})")
        worst[method] = {"phases": len(ratios), "within_1.2x": within, "worst_ratio": ratios[0][0]}
    return worst


def nudged_sweeps(device, betas=(0.5, 1.0, 1.5, 2.0, -0.5, -1.0, -2.0),
                  progress: Callable[[str], None] = print) -> dict:
    """Steps of a nudged phase from the free equilibrium vs β: 64-64-10 at init, 256 digits,
    atol 1e-4, max_time 200; Gauss–Seidel (Δt 1, exact nudged top layer) and fast_euler (Δt 0.5)."""
    torch.manual_seed(0)
    model = LayeredHopfield([64, 64, 10]).to(device)
    data = digits().flat().train
    c = model.prepare(Condition(data.x[:256].to(device), model.target(data.y[:256].to(device))))
    out = {}
    progress("steps of a nudged phase vs beta (64-64-10 at init, 256 digits, atol 1e-4, max_time 200)")
    for method, dt in {"gauss_seidel": 1.0, "fast_euler": 0.5}.items():
        opts = SettleOptions(method=method, step_size=dt, atol=1e-4, max_time=200)
        free = opts(model, c)
        for beta in betas:
            eq = opts(model, c.nudged(beta), init=free.state)
            out[f"{method}_beta{beta:+g}"] = eq.steps if eq.converged else None
            progress(f"  method={method}  beta={beta:+g}  steps={eq.steps}  converged={eq.converged_fraction:.3f}")
    return out


def _main_job_net(device, beta: float, opts: SettleOptions):
    """The main job's net: 64-256-10, centered EP, Adam 2e-3, batch 32, 3 epochs on digits."""
    torch.manual_seed(0)
    data, model = digits().flat(), LayeredHopfield([64, 256, 10]).to(device)
    rule, opt = EquilibriumPropagation(beta, settle=opts), torch.optim.Adam(model.parameters(), 2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(3):
        for x, y in data.train.batches(32, shuffle=True, generator=order):
            write_grads(model, rule.update(model, x.to(device), y.to(device)).grads)
            opt.step()
    return data, model


def _sweeps_to(model, condition: Condition, init, atol: float, limit: int) -> torch.Tensor:
    """Per sample, the first Gauss–Seidel sweep (Δt 1) after which its residual is <= atol (−1: none in ``limit``)."""
    one = SettleOptions(method="gauss_seidel", step_size=1.0, atol=0.0, max_time=1)
    state, sweeps = init, torch.full((init[0].shape[0],), -1)
    for k in range(limit):
        eq = one(model, condition, init=state)
        sweeps[(eq.residual.cpu() <= atol) & (sweeps < 0)] = k
        state = eq.state
    return sweeps


def _smallest_eigenvalue(w: torch.Tensor, free_state, i: int, beta: float) -> float:
    """Smallest eigenvalue of F_{−β}'s Hessian [[I, −W₁ᵀ], [−W₁, (1 − β)I]] of sample ``i``,
    over its units strictly inside (0, 1) at the free state."""
    h, o = (s[i].cpu() for s in free_state)
    ih, io = ((h > 0) & (h < 1)).nonzero().flatten(), ((o > 0) & (o < 1)).nonzero().flatten()
    coupling = w[io][:, ih]
    hessian = torch.eye(len(ih) + len(io))
    hessian[len(ih):, :len(ih)], hessian[:len(ih), len(ih):] = -coupling, -coupling.T
    hessian[len(ih):, len(ih):] -= beta * torch.eye(len(io))
    return torch.linalg.eigvalsh(hessian).min().item()


def negative_phase_curvature(device, beta: float = 0.5, slow: int = 30,
                             progress: Callable[[str], None] = print) -> dict:
    """Why some −β phases crawl: the main job's net after 3 epochs on digits; per training
    sample, the Gauss–Seidel sweeps of the −β phase from the free state, and the smallest
    eigenvalue of F_{−β}'s Hessian at the free state (:func:`_smallest_eigenvalue`)."""
    opts = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=400)
    data, model = _main_job_net(device, beta, opts)
    c = model.prepare(Condition(data.train.x.to(device), model.target(data.train.y.to(device))))
    free = opts(model, c)
    sweeps = _sweeps_to(model, c.nudged(-beta), free.state, 1e-3, 400)
    w = model.layers[1].weight.detach().cpu()
    crawl = (sweeps > slow).nonzero().flatten().tolist()
    rest = [_smallest_eigenvalue(w, free.state, i, beta) for i in (sweeps <= slow).nonzero().flatten().tolist()[:200]]
    eig = [_smallest_eigenvalue(w, free.state, i, beta) for i in crawl]
    progress(f"-beta phase after 3 epochs: {len(crawl)} of {len(sweeps)} samples need > {slow} sweeps "
             f"(max {int(sweeps.max())}); smallest Hessian eigenvalue there: {min(eig):.3f} .. {max(eig):.3f}; "
             f"median for 200 others: {statistics.median(rest):.3f}")
    return {"samples_slow": len(crawl), "max_sweeps": int(sweeps.max()), "eig_slow_min": min(eig),
            "eig_slow_max": max(eig), "eig_others_median": statistics.median(rest)}

"""The dendritic microcircuit's study (issue 21; Sacramento, Costa, Bengio & Senn 2018): how well
the apical potentials carry backprop's errors, in the analytic self-predicting state and in the
one sleep learns; how ‖v_A‖ falls during sleep; the compartments' traces through a taught settle;
the cost of a taught settle against a backprop step. Hydra-free: ``scripts/dendritic.py`` is the
entry point. Each function returns numbers; the script prints them as JSON lines."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..models import DendriticMicrocircuit
from ..phases import Condition, State
from ..rules import DendriticSleep, UrbanczikSenn, write_grads
from ..settle import SettleOptions, settle
from .timing import backprop, random_batch, timed, train_step, with_adam

PANELS = ("soma", "basal", "apical", "interneuron")
MLP_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos∠(a, b) of the two tensors flattened (a whole batch of errors at once): ⟨a, b⟩/(‖a‖‖b‖).

    Args:
        a: any shape.
        b: the same number of elements.
    """
    a, b = a.flatten(), b.flatten()
    return (torch.dot(a, b) / (a.norm() * b.norm())).item()


def transpose_down_(model: DendriticMicrocircuit) -> DendriticMicrocircuit:
    """Set the top-down weights to the transposed forward ones, W_down,k = W_up,k+1ᵀ: the case in
    which the apical potentials are backprop's errors (with W_down fixed at random they are
    feedback alignment's). Returns the model."""
    with torch.no_grad():
        for k, down in enumerate(model.down):
            down.weight.copy_(model.up[k + 1].weight.T)
    return model


def backprop_errors(model: DendriticMicrocircuit, x: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """Backprop's errors ∂L/∂r_k of each hidden layer's rates, by autograd, through the network's
    steady-state forward map u_k = ĝ_k (W_up,k r_{k−1} + b_k), r_k = φ(u_k) (its free steady state
    in the self-predicting state), for the squared error's output error φ_N'(u_N) ⊙ (u_N − target):
    the top-down pathway sees the output through its rate.

    Args:
        model: the microcircuit.
        x: inputs ``(batch, n_0)``.
        target: ``(batch, n_N)``.

    Returns:
        One ``(batch, n_k)`` tensor per hidden layer, bottom first.
    """
    with torch.enable_grad():
        rates, u = [x], None
        for k, up in enumerate(model.up):
            u = model.gain(k) * up(rates[-1])
            rates.append(model.phis[k](u))
        slope = torch.autograd.grad(rates[-1].sum(), u, retain_graph=True)[0]
        return list(torch.autograd.grad(u, rates[1:-1], grad_outputs=(slope * (u - target)).detach()))


def apical_alignment(model: DendriticMicrocircuit, x: torch.Tensor, target: torch.Tensor, beta: float,
                     options: SettleOptions, change: bool = False) -> list[float]:
    """cos∠(v_A,k, −∂L/∂r_k) per hidden layer at the steady state under a teacher of strength β
    (small: v_A,k ≈ −κ_k ∂L/∂r_k to first order, :class:`~dynets.models.DendriticMicrocircuit`).

    Args:
        model: the microcircuit.
        x: inputs ``(batch, n_0)``.
        target: ``(batch, n_N)``.
        beta: the teacher's strength.
        options: how the taught phase settles (tightly: the signal is O(β)).
        change: measure the teacher's change of v_A, v_A(β) − v_A(0), instead of v_A(β): the error
            the top-down pathway carries, whatever residual the lateral weights leave without a teacher.
    """
    taught = Condition(x, target, beta=beta)
    apical = model.apical(settle(model, taught, options=options).state, taught)
    if change:
        free = Condition(x)
        apical = [v - v0 for v, v0 in zip(apical, model.apical(settle(model, free, options=options).state, free))]
    return [cosine(v, -e) for v, e in zip(apical, backprop_errors(model, x, target))]


def apical_norm(model: DendriticMicrocircuit, x: torch.Tensor, options: SettleOptions) -> float:
    """Mean over the samples of ‖v_A‖ (all hidden layers together) at the free steady state: what
    :class:`~dynets.rules.DendriticSleep`'s stop rule watches, here on inputs of one's choice.

    Args:
        model: the microcircuit.
        x: inputs ``(batch, n_0)`` (held out from sleep).
        options: how the free phase settles.
    """
    c = Condition(x)
    apical = model.apical(settle(model, c, options=options).state, c)
    return torch.cat([v.flatten(1) for v in apical], 1).norm(dim=1).mean().item()


def lateral_distance(model: DendriticMicrocircuit, x: torch.Tensor) -> list[dict[str, float]]:
    """How far the lateral weights are from the analytic self-predicting ones (W*, set by
    :meth:`~dynets.models.dendritic.DendriticMicrocircuit.self_predicting_`), per hidden layer k:
    ‖W_PI,k − W*_PI,k‖/‖W*_PI,k‖ and ‖W_IP,k − W*_IP,k‖/‖W*_IP,k‖ over the live units only, those
    with φ'(u) ≠ 0 (relu: u > 0) on some input of ``x`` in the feed-forward state
    (:meth:`~dynets.models.dendritic.DendriticMicrocircuit.predicted_state`): the
    columns of W_PI of live interneurons (the pyramids of layer k+1), the rows of W_IP of live
    interneurons and its columns of live pyramids of layer k. A silent unit's weights never act.

    Args:
        model: the microcircuit.
        x: inputs ``(batch, n_0)`` that decide which units live.

    Returns:
        ``[{"pi": d_PI, "ip": d_IP}, ...]``, bottom first.
    """
    ideal = copy.deepcopy(model).self_predicting_()
    with torch.no_grad():
        state = ideal.predicted_state(Condition(x))
        live = [(a.df(u, a.f(u)) != 0).any(0) for a, u in zip(model.acts, state[::2])]   # φ' > 0 somewhere
        rel = lambda w, w_star: ((w - w_star).norm() / w_star.norm()).item()
        return [{"pi": rel(model.pi[k].weight[:, live[k + 1]], ideal.pi[k].weight[:, live[k + 1]]),
                 "ip": rel(model.ip[k].weight[live[k + 1]][:, live[k]], ideal.ip[k].weight[live[k + 1]][:, live[k]])}
                for k in range(model.n - 1)]


def sleep_curve(model: DendriticMicrocircuit, rule: DendriticSleep, optimizer: torch.optim.Optimizer,
                inputs: torch.Tensor, held_out: torch.Tensor, steps: int, batch: int, every: int,
                options: SettleOptions, seed: int = 0, measure: Callable[[], dict] | None = None,
                progress: Callable[[str], None] = print,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> list[dict]:
    """Sleep from the model's lateral weights: ``steps`` updates of ``rule`` on batches drawn from
    ``inputs`` (labels unused), each written by ``optimizer``; ‖v_A‖ on ``held_out`` every
    ``every`` steps and at the last. Stops early when the rule's stop rule does.

    Args:
        model: the microcircuit (edited in place).
        rule: the sleep rule.
        optimizer: over the model's parameters (only the lateral ones get gradients).
        inputs: the inputs sleep draws batches from.
        held_out: inputs ‖v_A‖ is measured on.
        steps: the most updates.
        batch: samples per update.
        every: updates between measurements.
        options: how ``held_out`` settles.
        seed: of the batches' draw.
        measure: called at each measurement; its dict joins the row (e.g. :func:`apical_alignment`'s cosines).
        progress: called with a line per measurement.
        scheduler: of ``optimizer``'s learning rate, stepped after each update (``None``: constant).

    Returns:
        ``[{"step", "samples", "apical", "ratio", ...}, ...]``, ratio = ‖v_A‖ over its value at step 0.
    """
    gen, rows = torch.Generator().manual_seed(seed), []
    for step in range(steps + 1):
        if step % every == 0 or step == steps or rule.stopped:
            a = apical_norm(model, held_out, options)
            rows.append({"step": step, "samples": step * batch, "apical": a, "ratio": a / rows[0]["apical"] if rows else 1.0,
                         **(measure() if measure else {})})
            progress(f"sleep step {step}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items()))
        if step == steps or rule.stopped:
            return rows
        update = rule.update(model, inputs[torch.randint(len(inputs), (batch,), generator=gen)])
        write_grads(model, update.grads)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _path(model: DendriticMicrocircuit, condition: Condition, init: State | None, duration: float,
          dt: float) -> tuple[list[tuple[float, dict[str, torch.Tensor]]], State]:
    """(t, every compartment's potential) along an Euler path of ``duration`` under ``condition``,
    and the state it ends in."""
    opts = SettleOptions(method="fast_euler", step_size=dt, atol=0.0, max_time=duration, check_every=1)
    eq = settle(model, condition, init, options=opts, record=True)
    with torch.no_grad():
        return [(t, model.potentials(s, condition)) for t, s in eq.trajectory], eq.state


def traces(model: DendriticMicrocircuit, x: torch.Tensor, target: torch.Tensor, beta: float,
           free_time: float = 20.0, taught_time: float = 20.0, dt: float = 0.05) -> dict[str, torch.Tensor]:
    """Every compartment's potential through a free settle from rest, then a taught one (the teacher
    switched on at ``free_time``): ``{"t": (T,), "soma.k": (T, batch, n_k), "basal.k", ...}``.

    Args:
        model: the microcircuit.
        x: inputs ``(batch, n_0)``.
        target: the teacher's ``(batch, n_N)``.
        beta: the teacher's strength.
        free_time: how long the free settle lasts.
        taught_time: how long the taught one lasts.
        dt: the Euler step (small: the traces follow the flow).
    """
    free, end = _path(model, Condition(x), None, free_time, dt)
    taught, _ = _path(model, Condition(x, target, beta=beta), end, taught_time, dt)
    points = free + [(free_time + t, p) for t, p in taught[1:]]
    out = {"t": torch.tensor([t for t, _ in points])}
    return out | {name: torch.stack([p[name] for _, p in points]) for name in points[0][1]}


def plot_traces(curves: dict[str, torch.Tensor], layer: int, path: Path, units: int = 3, sample: int = 0,
                teacher_at: float | None = None) -> Path:
    """One panel per compartment of hidden ``layer`` (soma, basal, apical, interneuron) and one of
    the output somas with their targets' onset marked; ``units`` units each of one sample.

    Args:
        curves: :func:`traces`' result.
        layer: the hidden layer, from 1.
        path: the PNG to write.
        units: units drawn per panel.
        sample: which sample of the batch.
        teacher_at: when the teacher came on (a dashed line).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = f"soma.{sum(k.startswith('soma.') for k in curves)}"
    names = [f"{kind}.{layer}" for kind in PANELS] + [out]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), sharex=True)
    for ax, name in zip(axes, names):
        ax.plot(curves["t"], curves[name][:, sample, :units])
        ax.set_title(name if name != out else f"{name} (output)"), ax.set_xlabel("time")
        if teacher_at is not None:
            ax.axvline(teacher_at, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("potential")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def settle_cost(sizes=(784, 500, 10), batch: int = 128, beta: float = 1.0, activation: str = "relu",
                options: SettleOptions | None = None,
                device: torch.device | str = "cpu", repeats: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Time a taught settle of a self-predicting microcircuit (from its free steady state) and a
    whole Urbanczik–Senn step (free and taught settles, the plasticity, an Adam step) against a
    backprop step of the same-size MLP (the same φ, squared error, the same Adam step),
    on one random batch. The JSON-line form of ``scripts/bench.py``'s results.

    Args:
        sizes: the layer sizes.
        batch: the batch size.
        beta: the teacher's strength.
        activation: φ, of the microcircuit and the MLP's hidden layers.
        options: how the phases settle (default: Gauss–Seidel, Δt 1, atol 1e-3, a check every 5 sweeps).
        device: where it runs.
        repeats: timed steps of each.
        warmup: untimed steps of each first.
        seed: of the batch and the weights.

    Returns:
        :func:`~dynets.studies.timing.timed`'s dict (``ms_taught_settle``, ``ms_dendritic``,
        ``ms_backprop``, ``ratio_vs_backprop`` of the taught settle) with ``ratio_step_vs_backprop``.
    """
    device = torch.device(device)
    options = options or SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=400, check_every=5)
    x, labels = random_batch((sizes[0],), sizes[-1], batch, device, seed)
    model = DendriticMicrocircuit(list(sizes), activation).self_predicting_().to(device)
    trained, rule = copy.deepcopy(model), UrbanczikSenn(beta=beta, settle=options)
    c = Condition(x, model.target(labels))
    free = settle(model, c, options=options)
    steps = {"taught_settle": lambda: settle(model, c.nudged(beta), free.state, options=options),
             "dendritic": with_adam(trained.parameters(), lambda: train_step(rule, trained, x, labels)),
             "backprop": backprop(list(sizes), MLP_ACTIVATIONS[activation](), x, model.target(labels))}
    result, ms = timed(f"dendritic {'-'.join(map(str, sizes))}/b{batch}", steps, device, repeats, warmup, "taught_settle")
    taught = settle(model, c.nudged(beta), free.state, options=options)
    return {**result, "ratio_step_vs_backprop": ms["dendritic"] / ms["backprop"], "steps_free": free.steps,
            "steps_taught": taught.steps}

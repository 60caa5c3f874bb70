"""Time one training step of every dynets rule against backprop and the textbook autograd rule.

    python scripts/bench.py [--device cpu] [--configs 784,512,10:128 ...] [--repeats 20] [--warmup 3]
                            [--families ep pc chl ...] [--out FILE.jsonl]
    python scripts/bench.py --table docs/results/bench_cpu.jsonl     # the README's speed table from a run's lines
    python scripts/bench.py --table docs/results/bench_cpu.jsonl --counts docs/results/counts_cpu.jsonl
                                                                     # its times beside another run's counts

ep (centered, β 0.5, hard sigmoid; 30 Euler steps of Δt 0.5 from rest, ±β phases of 10) and pc (nudged, β 0.1,
tanh, linear read-out; 20 steps from the feedforward pass): ``dynets`` at the steps of ``autograd_reference``
(dynets.testing; checked first to give the same gradients), ``dynets_torchdiffeq``, and stopped at the residual
the reference leaves: ``dynets_adaptive`` (ep; Δt 0.5, ``_dt1``: 1), ``dynets_gauss_seidel`` (Δt 1); on GPU
``*_compiled`` (dynets.studies.bench_references). Every other family on its standard model, Gauss-Seidel settles
(dynets.studies.bench_families): CHL, implicit differentiation, node and weight perturbation (16 antithetic probes;
``ms_per_probe``: the marginal cost of a probe against a one-probe step), wake-sleep and reweighted wake-sleep
(Helmholtz machine of the sizes, x > 0.5), PCD (an RBM of the first two sizes), Hebbian sleep (the recall study's
memory, N 200 at load 0.1, 100 dreams), vector-field EP, FA, Kolen-Pollack, weight mirrors (the whole step, and
``mirror_sleep`` its sleep alone), DTP. Each step ends with the same fused Adam step; ``backprop``: the same-size
MLP. conv: the published MNIST CNN (1x28x28, 32-64 5x5 max-pooled, fc 10, batch 128): ConvHopfield's EP (as ep,
Gauss-Seidel, checked every sweep) and the textbook conv EP (free 40, ±β 12 synchronous steps, Δt 1),
ConvPredictiveCoding's PC (as pc) at the same residual, backprop through the same couplings. genpc: the
self-supervised study's generative PC (784-1024 tanh, batch 64, after 50 unsupervised Adam steps on uniform
inputs) settled by conjugate gradient against the Euler flow it used before, to the same atol 1e-3
(dynets.studies.bench_genpc); backprop: the sigmoid autoencoder of the same sizes. dendritic: a taught settle of a
self-predicting 784-500-10 microcircuit (relu, Gauss-Seidel) and its whole Urbanczik-Senn step against a backprop
step of the same MLP (dynets.studies.dendritic.settle_cost). fashion_epochs (not in the default list: it trains
for a minute and needs Fashion-MNIST): the main job's 3 epochs of centered EP on Fashion-MNIST (+experiment=fashion)
and backprop through the same-size net with the same hard sigmoid, cost, batch and optimizer, one after the other,
each epoch's time from the runs' metrics (dynets.studies.epoch_cost). The families', EP's, PC's and conv's lines
also count one more step of each method after the timed ones (dynets.studies.counts; load-independent):
``macs_<method>`` (multiply-adds of its products and convolutions), ``ops_<method>`` (ATen operations dispatched),
``syncs_<method>`` (host reads of a value), ``sweeps_<method>`` (the rule's settle sweeps per phase) and
``macs_ratio_vs_backprop``, ``ops_ratio_vs_backprop``. The last lines: one JSON object each.
"""
import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dynets.studies.bench_families import FAMILIES, bench_family, label
from dynets.studies.bench_genpc import bench_genpc
from dynets.studies.bench_references import REFERENCES, bench_conv, bench_reference
from dynets.studies.dendritic import settle_cost
from dynets.studies.epoch_cost import epoch_cost
from dynets.studies.speed_table import counts_table, read_lines, speed_table

CPU_CONFIGS = ["784,512,10:128", "784,1024,1024,10:128"]
GPU_CONFIGS = ["784,512,10:128", "784,512,10:1024", "784,1024,1024,10:128", "784,1024,1024,10:1024"]
ALL = [*REFERENCES, *FAMILIES, "conv", "genpc", "dendritic"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FASHION = ["+experiment=fashion", "trainer.alignment=false", "logger=none"]
# Backprop through the feed-forward net of the same sizes and hidden activation (PredictiveCoding's free phase).
BACKPROP = ["model=pc", "model.activation=hard_sigmoid", "rule=backprop", "~rule.beta"]


def fashion_configs(device: torch.device) -> dict[str, dict]:
    """The composed configs of the main job's Fashion-MNIST run and of backprop on the same net."""
    runs = {"ep": FASHION, "backprop": [*FASHION, *BACKPROP]}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return {name: OmegaConf.to_container(compose("train", overrides=[*o, f"trainer.device={device}"]),
                                             resolve=True) for name, o in runs.items()}


def bench(families: list[str], configs: list[str], device: torch.device, repeats: int, warmup: int) -> list[dict]:
    """The JSON lines of ``families`` at each of ``configs`` (``sizes:batch``); a family whose
    standard model does not take the sizes (the memory, conv) runs once."""
    results, done = [], set()
    for item in configs:
        sizes, batch = [int(n) for n in item.split(":")[0].split(",")], int(item.split(":")[1])
        for family in families:
            if family in REFERENCES:
                results.append(bench_reference(family, sizes, batch, device, repeats, warmup))
            elif family in FAMILIES and (name := label(family, sizes, batch)) not in done:
                done.add(name)
                results.append(bench_family(family, sizes, batch, device, repeats, warmup))
    results += bench_conv(128, device, repeats, warmup) if "conv" in families else []
    results += [settle_cost(device=device, repeats=repeats, warmup=warmup)] if "dendritic" in families else []
    results += [bench_genpc([784, 1024], 64, device, repeats, warmup)] if "genpc" in families else []
    return results + ([epoch_cost(fashion_configs(device), "fashion_epochs 784-512-10/b50")]
                      if "fashion_epochs" in families else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", help="sizes:batch, e.g. 784,512,10:128 (default: 2 on CPU, 4 on GPU)")
    parser.add_argument("--repeats", type=int, default=20), parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--families", nargs="+", choices=[*ALL, "fashion_epochs"], default=ALL)
    parser.add_argument("--out", help="also write the JSON lines to this file")
    parser.add_argument("--table", help="print the speed table of this file of JSON lines, and nothing else")
    parser.add_argument("--counts", help="with --table: print the table of this file's counts beside its times")
    args = parser.parse_args()
    if args.table:
        timed = read_lines(args.table)
        return print(counts_table(read_lines(args.counts), timed) if args.counts else speed_table(timed))
    device = torch.device(args.device)
    results = bench(args.families, args.configs or (GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS),
                    device, args.repeats, args.warmup)
    text = "\n".join(map(json.dumps, results))
    print("\n" + text)   # the last lines: one JSON object per measurement
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()

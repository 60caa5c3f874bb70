"""The settling studies of :mod:`dynets.studies.settling`: steps vs width, the adaptive stop
against the fewest steps, nudged phases vs β, the curvature of the −β phase.

    python scripts/settling.py [--device cpu] [--studies width stops betas curvature] [--widths 128,256]

The last lines of output are one JSON object per study.
"""
from __future__ import annotations

import argparse
import json

import torch

from dynets.studies.settling import negative_phase_curvature, nudged_sweeps, steps_vs_width, stop_overshoot

STUDIES = {"width": "steps to converge vs width (seconds)", "stops": "the adaptive stop vs the fewest steps (~1 min on CPU)",
           "betas": "steps of nudged phases for beta = ±0.5 ... ±2 (seconds)",
           "curvature": "why some -beta phases crawl: the curvature of F at the free state (~1 min)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=["width"],
                        help="; ".join(f"{k}: {v}" for k, v in STUDIES.items()))
    parser.add_argument("--widths", default="128,256,512,1024,2048", help="hidden widths of the width study")
    args = parser.parse_args()
    device = torch.device(args.device)
    run = {"width": lambda: {"rows": steps_vs_width(device, [int(w) for w in args.widths.split(",")])},
           "stops": lambda: stop_overshoot(device), "betas": lambda: nudged_sweeps(device),
           "curvature": lambda: negative_phase_curvature(device)}
    results = [{"device": str(device), "study": name, **run[name]()} for name in args.studies]
    print()
    for result in results:   # the last lines: one JSON object per study
        print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Collect the runs of a hydra multirun into one table: overrides as columns, then the
summary metrics. Markdown to stdout, CSV with --out (the logic of ``scripts/collect.py``).

    python scripts/train.py -m rule.beta=0.1,0.5 optimizer.lr=1e-3,2e-3
    python scripts/collect.py multirun/2026-01-31/12-00-00 --out table.csv

A run is a folder with .hydra/overrides.yaml; one without summary.json (crashed, killed or
still running) is listed with its status and the number of epochs in its metrics.jsonl.
submitit's own folders (``.submitit/``: pickles and job logs) are not runs. Where an Optuna search
wrote optimization_results.yaml, the column ``best`` marks its best trial: the run whose
overrides hold the study's ``best_params`` and whose objective is its ``best_value``.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml


def natural_key(path: Path) -> list[tuple[int, int, str]]:
    """Sort key that orders the numbers inside a path by value: run 2 before run 10."""
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in re.split(r"(\d+)", str(path)) if s]


def run_dirs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (one with .hydra/overrides.yaml, outside submitit's
    ``.submitit/`` folders), in natural order."""
    runs = (f.parent.parent for f in root.rglob(".hydra/overrides.yaml"))
    return sorted((d for d in runs if ".submitit" not in d.relative_to(root).parts), key=natural_key)


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One row: ``run`` (path under ``root``), ``status``, each override ``key=value`` as
    column ``key`` (value as typed), then the entries of summary.json."""
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    row: dict[str, Any] = {"run": str(run_dir.relative_to(root)), "status": "done"}
    row.update(o.split("=", 1) if "=" in o else (o, "") for o in overrides)
    summary = run_dir / "summary.json"
    if summary.exists():
        row.update(json.loads(summary.read_text()))
    else:
        metrics = run_dir / "metrics.jsonl"
        epochs = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        row["status"] = f"incomplete ({epochs} epochs logged)"
    return row


def same(a: Any, b: Any) -> bool:
    """Whether an override's text and a value Optuna recorded name the same thing (numbers by
    value: the override ``rule.beta=1e-05`` and the float 1e-05)."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def mark_best(rows: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """The rows with a column ``best`` after ``status``, "yes" on each Optuna study's best trial
    (optimization_results.yaml under ``root``): the first run whose overrides hold
    ``best_params`` and whose summary holds ``best_value``. The rows as they were where no
    study wrote results; a note on stderr for a best trial that is not among them."""
    studies = [yaml.safe_load(p.read_text()) or {} for p in sorted(root.rglob("optimization_results.yaml"))]
    studies = [s for s in studies if "best_params" in s]   # a multi-objective study writes its Pareto front
    if not studies:
        return rows
    rows = [{"run": row["run"], "status": row["status"], "best": "", **row} for row in rows]
    for study in studies:
        params, value = study["best_params"], study["best_value"]
        match = next((row for row in rows if all(k in row and same(row[k], v) for k, v in params.items())
                      and any(isinstance(x, (int, float)) and same(x, value) for x in row.values())), None)
        if match is None:
            print(f"the best trial {params} ({value}) is not among these runs", file=sys.stderr)
        else:
            match["best"] = "yes"
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, in order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row))


def markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table; floats to 4 significant digits, missing cells empty."""
    cols = columns(rows)
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The table as CSV at full precision, missing cells empty."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="a hydra multirun (sweep) directory")
    parser.add_argument("--out", type=Path, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    rows = [read_run(d, args.multirun_dir) for d in run_dirs(args.multirun_dir)]
    rows = mark_best(rows, args.multirun_dir)
    if not rows:
        print(f"no runs (folders with .hydra/overrides.yaml) under {args.multirun_dir}", file=sys.stderr)
        return 1
    print(markdown(rows))
    if args.out:
        write_csv(rows, args.out)
    return 0

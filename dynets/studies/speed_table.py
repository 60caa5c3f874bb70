"""The README's speed table, made from ``scripts/bench.py``'s JSON lines (one per measurement):
``python scripts/bench.py --table docs/results/bench_cpu.jsonl`` prints it; with ``--counts
docs/results/counts_cpu.jsonl``, the table of docs/results/speed.md that sets those times beside
each step's counts."""
from __future__ import annotations

import json
import os
from pathlib import Path

HEADER = ("| step | net / batch | ms | × backprop | textbook ÷ dynets | note |\n"
          "|---|---|---|---|---|---|")


def read_lines(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a file of JSON lines (blank lines skipped).

    Args:
        path: the file.
    """
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def row(line: dict) -> str:
    """One table row of a bench line: the family and net of its ``config``, the ms of its fastest
    dynets method (``dynets_best``, else its ``method``), that over the backprop step's, the
    textbook autograd version's ms over it (where the bench has one) and what was measured.

    Args:
        line: one JSON object of ``scripts/bench.py``.
    """
    family, net = line["config"].split(" ", 1)
    method = line.get("dynets_best", line["method"])
    ms, textbook = line[f"ms_{method}"], line.get("ms_autograd_reference")
    notes = [] if method in (family, "dynets") else [method]
    if "ms_per_probe" in line:
        notes.append(f"{line['ms_per_probe']:.2f} ms per probe")
    speedup = f"{textbook / ms:.1f}" if textbook is not None else "—"
    return (f"| {family} | {net} | {ms:.2f} | {ms / line['ms_backprop']:.2f} | {speedup} | "
            f"{', '.join(notes)} |")


def speed_table(lines: list[dict]) -> str:
    """The markdown table of bench ``lines``, one row each in their order, and a last line saying
    where and how they were measured (every device and thread count among them).

    Args:
        lines: ``scripts/bench.py``'s JSON objects.
    """
    where = sorted({f"{line['device']}, {line['threads']} thread{'s' * (line['threads'] != 1)}" for line in lines})
    return "\n".join([HEADER, *map(row, lines), "", f"Measured on {'; '.join(where)}."])


COUNTS_HEADER = ("| step | net / batch | × backprop, time | × backprop, multiply–adds | ops per step | host syncs | "
                 "sweeps |\n|---|---|---|---|---|---|---|")


def sweeps_text(sweeps: dict) -> str:
    """``free 3, nudged_+ 4``: a rule's sweeps per phase (:func:`dynets.studies.counts.sweeps`),
    named without their ``steps`` prefix or suffix; ``—`` for none.

    Args:
        sweeps: ``{metric name: sweeps}``.
    """
    names = {k: k.removeprefix("steps_").removesuffix("_steps") for k in sweeps}
    return ", ".join(f"{names[k]} {v:g}" for k, v in sweeps.items()) or "—"


def counts_row(counted: dict, timed: dict) -> str:
    """One row of the counts table: the timed line's ratio to backprop (of its fastest dynets
    method, as :func:`row`) beside that method's counts in the counted line of the same config.

    Args:
        counted: a bench line with counts (:func:`dynets.studies.counts.counts`).
        timed: the bench line of the same config whose times are shown.
    """
    family, net = counted["config"].split(" ", 1)
    method = timed.get("dynets_best", timed["method"])
    macs = counted[f"macs_{method}"] / counted["macs_backprop"]
    return (f"| {family} | {net} | {timed[f'ms_{method}'] / timed['ms_backprop']:.2f} | {macs:.2f} | "
            f"{counted[f'ops_{method}']} | {counted[f'syncs_{method}']} | "
            f"{sweeps_text(counted.get(f'sweeps_{method}', {}))} |")


def counts_table(counted: list[dict], timed: list[dict]) -> str:
    """The markdown table of the ``counted`` lines that have a timed line of the same config in
    ``timed``, in ``counted``'s order: time against backprop from ``timed`` (the bench run on a
    quiet machine), multiply–adds against backprop, operations, host syncs and sweeps of one step
    from ``counted`` (load-independent).

    Args:
        counted: ``scripts/bench.py``'s JSON objects with counts.
        timed: its JSON objects whose times the table shows.
    """
    by_config = {line["config"]: line for line in timed}
    rows = [counts_row(line, by_config[line["config"]]) for line in counted if line["config"] in by_config]
    return "\n".join([COUNTS_HEADER, *rows])

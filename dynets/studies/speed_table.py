"""The README's speed table, made from ``scripts/bench.py``'s JSON lines (one per measurement):
``python scripts/bench.py --table docs/results/bench_cpu.jsonl`` prints it."""
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

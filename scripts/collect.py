"""Collect the runs of a hydra multirun into one table (see :mod:`dynets.app.collect`).

    python scripts/collect.py multirun/2026-01-31/12-00-00 --out table.csv
"""
import sys

from dynets.app.collect import main

if __name__ == "__main__":
    sys.exit(main())

"""The README stays true: its option table names every config option, its links resolve,
and its Python snippets run and print what they claim."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def config_groups() -> dict[str, set[str]]:
    """Every config group (a folder under configs/ holding YAML files) and its options."""
    groups: dict[str, set[str]] = {}
    for path in (ROOT / "configs").rglob("*.yaml"):
        group = path.parent.relative_to(ROOT / "configs").as_posix()
        if group != ".":
            groups.setdefault(group, set()).add(path.stem)
    return groups


def option_table() -> dict[str, set[str]]:
    """The README's option table: group (from the first cell) -> the names in backticks in its row.

    A first cell reads `model=`, `+experiment=`, `hydra/launcher=` (with `-m`) or
    `configs/sweep/` (...): its first backticked word, without `+`, `=` and `configs/`, is the group.
    """
    section = README.split("## Options", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for row in re.findall(r"^\|(.+)\|\s*$", section, re.M):
        cells = row.split("|")
        names = re.findall(r"`([^`]+)`", cells[0])
        if len(cells) < 2 or not names:
            continue
        group = names[0].lstrip("+").rstrip("=").removeprefix("configs/").strip("/")
        table[group] = set(re.findall(r"`([^`]+)`", "|".join(cells[1:])))
    return table


def test_every_config_option_is_in_the_option_table():
    groups, table = config_groups(), option_table()
    assert {"model", "rule", "data", "sweep", "hydra/launcher"} <= set(groups)   # the parse sees the tree
    missing = [f"{group}={option}" for group, options in sorted(groups.items())
               for option in sorted(options) if option not in table.get(group, set())]
    assert not missing, f"README.md's option table lacks {', '.join(missing)}"


def test_the_option_table_names_no_option_that_does_not_exist():
    groups = config_groups()
    for group in option_table():
        assert group in groups, f"README.md's option table has a row for {group!r}, which is no config group"


def test_relative_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "no relative link found: the pattern is wrong"
    broken = [link for link in local if not (ROOT / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_results_pages_resolve_their_links():
    pages = sorted((ROOT / "docs" / "results").glob("*.md")) + [ROOT / "docs" / "roadmap.md"]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)#\s]+)[^)]*\)", page.read_text(encoding="utf-8")):
            if "://" not in link and not (page.parent / link).exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert not broken, f"broken links: {broken}"


def test_python_snippets_run(capsys, monkeypatch):
    """The snippets run in order in one namespace; what they print is checked against what
    the README says beside it: the settle converged, the nudge pulls the output toward the
    target, one epoch of EP learns, and centered EP's cosine with the exact gradient rises
    toward 1 as β falls."""
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert namespace["eq"].converged
    assert "nudge moves the output toward the target: True" in out
    accuracy = float(re.search(r"test accuracy after one epoch: ([0-9.]+)", out).group(1))
    assert accuracy > 0.8                    # chance is 0.1
    cosines = [float(c) for c in re.findall(r"β = [0-9.]+: cosine ([0-9.]+)", out)]
    assert len(cosines) == 2 and cosines[0] < cosines[1] and cosines[1] > 0.999


@pytest.mark.parametrize("line", [line for line in README.splitlines() if line.startswith("python scripts/train.py")])
def test_quick_start_overrides_compose(line):
    """Every quick-start command composes (the group options and fields it names exist)."""
    from hydra import compose, initialize_config_dir

    overrides = line.split("#")[0].split()[2:]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        compose(config_name="train", overrides=overrides)

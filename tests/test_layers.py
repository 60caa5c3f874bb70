"""Imports point down only: the engine imports neither the app nor the studies; the app imports no study."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dynets"


def imported(path: Path, root: Path = PACKAGE) -> set[str]:
    """The absolute names of the modules that ``path`` (in the package at ``root``) imports,
    relative imports resolved."""
    package = ["dynets", *path.relative_to(root).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.update([module] if node.module else [f"{module}.{a.name}" for a in node.names])
    return names


def layer(path: Path) -> str:
    top = path.relative_to(PACKAGE).parts[0]
    return top if top in ("app", "studies") else "engine"


FORBIDDEN = {"engine": ("dynets.app", "dynets.studies"), "app": ("dynets.studies",), "studies": ()}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    upward = sorted(n for n in imported(path) for f in FORBIDDEN[layer(path)] if n == f or n.startswith(f + "."))
    assert not upward, f"{path.relative_to(PACKAGE)} ({layer(path)}) imports {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The resolver itself: relative imports from dynets/rules reach dynets.app and dynets.studies."""
    fake = tmp_path / "dynets" / "rules" / "upward.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..app import fit\nfrom .. import studies\nfrom .base import Rule\n")
    assert imported(fake, tmp_path / "dynets") == {"dynets.app", "dynets.studies", "dynets.rules.base"}

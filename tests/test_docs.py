"""The API reference covers the package: every public module has a ``::: module`` directive in
docs/api/*.md (mkdocstrings renders it; ``mkdocs build --strict`` in CI checks the rest)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def public_modules(package: Path) -> set[str]:
    """Dotted names of the packages and modules under ``package`` with no ``_``-prefixed part."""
    names = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            names.add(".".join(parts))
    return names


def documented(api: Path) -> set[str]:
    return {m for page in api.glob("*.md") for m in DIRECTIVE.findall(page.read_text())}


def test_every_public_module_has_a_reference_page():
    missing = sorted(public_modules(ROOT / "dynets") - documented(ROOT / "docs" / "api"))
    assert not missing, f"add a '::: module' line for each to a page in docs/api/: {missing}"


def test_every_directive_names_a_module():
    stale = sorted(documented(ROOT / "docs" / "api") - public_modules(ROOT / "dynets"))
    assert not stale, f"docs/api/ documents modules that do not exist: {stale}"


def test_the_check_sees_a_module_without_a_page(tmp_path):
    """The two sets on a package built here: a new module, a private one, a nested package."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "new.py", "_private.py", "sub/__init__.py", "sub/leaf.py"):
        (pkg / name).write_text("")
    api = tmp_path / "api"
    api.mkdir()
    (api / "page.md").write_text("# Page\n\n::: pkg\n    options:\n      members: false\n\n::: pkg.sub.leaf\n")
    assert public_modules(pkg) == {"pkg", "pkg.new", "pkg.sub", "pkg.sub.leaf"}
    assert public_modules(pkg) - documented(api) == {"pkg.new", "pkg.sub"}

"""A griffe extension for the API reference: the docstrings' Sphinx roles (``:class:`~a.B```,
``:func:`f```, ``:mod:`.run```) become mkdocstrings cross-references, so that
``mkdocs build --strict`` fails on a reference to a name that no longer exists. A name that
does not resolve to a public dynets object (a method of "the model", a torch class) is shown
as code, unchecked."""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)`")


def target(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` names in the scope of ``obj``, or None."""
    if name.startswith("."):
        package = obj.module if obj.module.is_init_module else obj.module.parent
        return f"{package.path}{name}"
    head, _, rest = name.partition(".")
    if head == obj.package.name:
        return name
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        return None
    return f"{path}.{rest}" if rest else path


def link(obj: griffe.Object, match: re.Match) -> str:
    short, name = match.groups()
    title = name.rsplit(".", 1)[-1] if short else name.lstrip(".")
    path = target(obj, name)
    if path is None or not path.startswith("dynets") or any(p.startswith("_") for p in path.split(".")):
        return f"`{title}`"
    return f"[`{title}`][{path}]"


def walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from walk(member)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(lambda m: link(obj, m), obj.docstring.value)

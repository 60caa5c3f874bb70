"""Asking for a capability, for a class as well as an instance, and telling what is missing.

The capabilities themselves are the protocols of :mod:`dynets.capabilities` (which re-exports
these functions). Every member of a capability is a method or a class attribute, so
:func:`provides` answers for a class as ``isinstance`` does for its instances.
"""
from __future__ import annotations

import inspect
from typing import Iterable


def members(capability: type) -> list[str]:
    """The names a capability declares (its methods, properties and attributes).

    Args:
        capability: one of this module's protocols.
    """
    names = [n for n in vars(capability) if not n.startswith("_")]
    return names + [n for n in getattr(capability, "__annotations__", {}) if n not in names]


def provides(cls: type, capability: type) -> bool:
    """Whether instances of the class ``cls`` have ``capability`` (its members are class-level,
    so the class answers as ``isinstance`` does for an instance).

    Args:
        cls: a model (or rule) class.
        capability: one of this module's protocols.
    """
    return all(hasattr(cls, name) for name in members(capability))


def describe(capability: type) -> str:
    """``capability Energy: members energy(state, condition), ...``, for error messages.

    Args:
        capability: one of this module's protocols.
    """
    parts = []
    for name in members(capability):
        value = vars(capability).get(name)
        if callable(value):
            params = list(inspect.signature(value).parameters)[1:]
            parts.append(f"{name}({', '.join(params)})")
        else:
            parts.append(name)
    kind = "a method" if len(parts) == 1 else "members"
    return f"capability {capability.__name__}: {kind} {', '.join(parts)}"


def summary(capability: type) -> str:
    """The first line of the capability's docstring, lower-cased ("an energy ...").

    Args:
        capability: one of this module's protocols.
    """
    line = inspect.getdoc(capability).splitlines()[0].rstrip(".")
    return line[0].lower() + line[1:]


def missing(model: object, needs: Iterable[type], owner: str, providers: Iterable[type] = ()) -> str | None:
    """Why ``owner`` cannot use ``model``, ``None`` when it can: each missing capability
    named, with what it declares and the classes that have it.

    Args:
        model: the model to check.
        needs: the capabilities ``owner`` needs.
        owner: who needs them, as the message names it (a rule's class name).
        providers: classes to name as having a missing capability (read only on failure).
    """
    lacking = [c for c in needs if not isinstance(model, c)]
    if not lacking:
        return None
    providers = list(providers)
    parts = []
    for cap in lacking:
        have = [p.__name__ for p in providers if provides(p, cap)]
        parts.append(f"{summary(cap)} ({describe(cap)}" + (f"; e.g. {', '.join(have)}" if have else "") + ")")
    return f"{owner} needs a model with {' and '.join(parts)}; {type(model).__name__} has none"

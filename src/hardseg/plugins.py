"""Third-party strategies, models and datasets: one loader for the three entry-point groups.

A plugin is one module plus an entry point (as in timm's registries)::

    [project.entry-points."hardseg.models"]
    my_net = "my_pkg.net:MyNet"

Each registry (``strategies/registry.py``, ``models/__init__.py``,
``data/registry.py``) calls :func:`load_entry_points` once, lazily, in every
process that looks a name up (the driver and each Ray worker). A plugin that
fails to import, or is not what its group expects, is remembered with a
one-line reason instead of breaking the built-ins; the registry raises that
reason when the name is asked for.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Container


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone for an empty message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_entry_points(group: str, kind: str, *, known: Container[str], accept: Callable[[object], bool],
                      expected: str, register: Callable[[str, object], None], broken: dict[str, str]) -> None:
    """Register every entry point of ``group`` whose name is not ``known`` yet.

    Args:
        group: the entry-point group, e.g. ``hardseg.models``.
        kind: the word used in messages (``model``, ``strategy``, ``dataset``).
        known: names already registered (the built-ins win).
        accept: whether a loaded object is usable; otherwise it is recorded as broken.
        expected: what an acceptable object is, for the message (``a SegModel class or builder``).
        register: adds an accepted object under the entry point's name.
        broken: filled with ``name -> one-line reason`` for plugins that could not be used.
    """
    for ep in entry_points(group=group):
        if ep.name in known:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            broken[ep.name] = f"{kind} plugin '{ep.name}' ({ep.value}) failed to import: {describe_exception(exc)}"
            continue
        if not accept(obj):
            broken[ep.name] = f"{kind} plugin '{ep.name}' ({ep.value}) is not {expected}"
            continue
        register(ep.name, obj)

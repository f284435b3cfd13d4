"""Name → strategy class, plus third-party strategies from entry points.

Built-in strategies register themselves with ``@register_strategy("name")``.
A third-party package adds one by declaring an entry point in the
``hardseg.strategies`` group whose object is a :class:`Strategy` subclass::

    [project.entry-points."hardseg.strategies"]
    my_loss = "my_pkg.my_loss:MyLoss"

A plugin that fails to import (or is not a Strategy) does not break the
built-ins: naming it raises a one-line ConfigError that says why.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, TypeVar

from hardseg.errors import ConfigError

ENTRY_POINT_GROUP = "hardseg.strategies"
_STRATEGIES: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # plugin name → why it could not be loaded
_entry_points_loaded = False

S = TypeVar("S", bound=type)


def register_strategy(name: str) -> Callable[[S], S]:
    def deco(cls: S) -> S:
        if name in _STRATEGIES and _STRATEGIES[name] is not cls:
            raise ValueError(f"strategy '{name}' is already registered by {_STRATEGIES[name].__module__}")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls
    return deco


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from hardseg.strategies.base import Strategy

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _STRATEGIES:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            _BROKEN[ep.name] = f"strategy plugin '{ep.name}' ({ep.value}) failed to import: {exc}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            _BROKEN[ep.name] = f"strategy plugin '{ep.name}' ({ep.value}) is not a hardseg Strategy subclass"
            continue
        register_strategy(ep.name)(cls)


def available_strategies() -> list[str]:
    _load_entry_points()
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> type:
    _load_entry_points()
    if name in _BROKEN and name not in _STRATEGIES:
        raise ConfigError(_BROKEN[name].splitlines()[0])
    if name not in _STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; allowed: {', '.join(available_strategies())}")
    return _STRATEGIES[name]

"""Name → strategy class, plus third-party strategies from entry points.

Built-in strategies register themselves with ``@register_strategy("name")``.
A third-party package adds one by declaring an entry point in the
``hardseg.strategies`` group whose object is a :class:`Strategy` subclass::

    [project.entry-points."hardseg.strategies"]
    my_loss = "my_pkg.my_loss:MyLoss"

Registration checks the composition contract (``base.contract_violation``:
a phase its kind allows, no loss hook its kind never calls). A built-in or a
``@register_strategy`` class that breaks it raises a one-line ConfigError when
its module is imported. A plugin that fails to import, is not a Strategy or
breaks the contract does not break the built-ins: naming it raises a one-line
ConfigError that says why.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from hardseg.errors import ConfigError
from hardseg.plugins import load_entry_points
from hardseg.strategies.base import Strategy, contract_violation

ENTRY_POINT_GROUP = "hardseg.strategies"
_STRATEGIES: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # plugin name → why it could not be loaded
_entry_points_loaded = False

S = TypeVar("S", bound=type)


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a :class:`Strategy` subclass under ``name``, after checking its
    contract (ConfigError, one line, otherwise)."""
    def deco(cls: S) -> S:
        if name in _STRATEGIES and _STRATEGIES[name] is not cls:
            raise ValueError(f"strategy '{name}' is already registered by {_STRATEGIES[name].__module__}")
        if problem := contract_violation(cls, name):
            raise ConfigError(problem)
        cls.name = name
        _STRATEGIES[name] = cls
        return cls
    return deco


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    load_entry_points(ENTRY_POINT_GROUP, "strategy", known=_STRATEGIES,
                      accept=lambda obj: isinstance(obj, type) and issubclass(obj, Strategy),
                      expected="a hardseg Strategy subclass", register=_register_plugin, broken=_BROKEN)


def _register_plugin(name: str, cls: type) -> None:
    """Register an entry point's class, or remember in ``_BROKEN`` why its contract is broken."""
    if problem := contract_violation(cls, name, label="strategy plugin"):
        _BROKEN[name] = problem
    else:
        register_strategy(name)(cls)


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

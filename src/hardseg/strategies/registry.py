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
from hardseg.plugins import Registry
from hardseg.strategies.base import Strategy, contract_violation

ENTRY_POINT_GROUP = "hardseg.strategies"
S = TypeVar("S", bound=type)


def _plugin(name: str, cls: type) -> type | str:
    """An entry point's class, named, or why its contract is broken."""
    if problem := contract_violation(cls, name, label="strategy plugin"):
        return problem
    cls.name = name
    return cls


STRATEGIES: Registry[type] = Registry(
    ENTRY_POINT_GROUP, "strategy", error=ConfigError, expected="a hardseg Strategy subclass",
    accept=lambda obj: isinstance(obj, type) and issubclass(obj, Strategy), plugin=_plugin)


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a :class:`Strategy` subclass under ``name``, after checking its
    contract (ConfigError, one line, otherwise)."""
    def deco(cls: S) -> S:
        if problem := contract_violation(cls, name):
            raise ConfigError(problem)
        STRATEGIES.add(name, cls)
        cls.name = name
        return cls
    return deco


def available_strategies() -> list[str]:
    return STRATEGIES.names()


def get_strategy(name: str) -> type:
    return STRATEGIES.get(name)

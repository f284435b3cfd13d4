"""Name → strategy class, plus third-party strategies from entry points.

Built-in strategies register themselves with ``@register_strategy("name")``.
A third-party package adds one by declaring an entry point in the
``hardseg.strategies`` group whose object is a :class:`Strategy` subclass::

    [project.entry-points."hardseg.strategies"]
    my_loss = "my_pkg.my_loss:MyLoss"

Registration, and only registration, checks the composition contract
(:func:`contract_violation`: a phase, and no loss hook that phase never calls).
A built-in or a ``@register_strategy`` class that breaks it raises a one-line
ConfigError when its module is imported. A plugin that fails to import, is not a
Strategy or breaks the contract does not break the built-ins: naming it raises a
one-line ConfigError that says why.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from hardseg.errors import ConfigError
from hardseg.plugins import Registry
from hardseg.strategies.base import MAIN_LOSS_HOOKS, TERMS_HOOKS, Phase, Strategy

ENTRY_POINT_GROUP = "hardseg.strategies"
S = TypeVar("S", bound=type)


def contract_violation(cls: type, name: str | None = None, label: str = "strategy") -> str | None:
    """Why ``cls`` cannot be composed (one line, naming what to fix), or None.

    ``cls`` must be a :class:`Strategy` that declares a :class:`Phase` and overrides no loss hook
    its phase never calls (:attr:`Phase.hooks`): the objective would silently skip it.
    ``label`` starts the message (``strategy``, ``strategy plugin``).
    """
    who = f"{label} '{name or getattr(cls, 'name', '') or cls.__name__}' ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return f"{who} is not a hardseg Strategy subclass"
    if not isinstance(cls.phase, Phase):
        return f"{who} declares no phase; declare phase = Phase.<step>, one of {', '.join(p.name for p in Phase)}"
    for hook in (*MAIN_LOSS_HOOKS, *TERMS_HOOKS):
        if hook not in cls.phase.hooks and getattr(cls, hook) is not getattr(Strategy, hook):
            phases = " or ".join(f"Phase.{p.name}" for p in Phase if hook in p.hooks)
            mine = "/".join(f"{h}()" for h in cls.phase.hooks)
            return (f"{who} overrides {hook}(), which the objective calls only in phase {phases}, but its phase "
                    f"is {cls.phase.name}; declare one of those phases or move it into {mine}")
    return None


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

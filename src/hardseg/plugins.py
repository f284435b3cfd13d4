"""Name registries for strategies, models and datasets: the built-ins plus third-party plugins.

A plugin is one module plus an entry point (as in timm's registries)::

    [project.entry-points."hardseg.models"]
    my_net = "my_pkg.net:MyNet"

Each of ``strategies/registry.py``, ``models/__init__.py`` and ``data/registry.py``
holds one :class:`Registry`. Built-ins are added when their module is imported;
the group's entry points are read once, lazily, in every process that looks a
name up (the driver and each Ray worker). A plugin that fails to import, or is
not what its group expects, is remembered with a one-line reason instead of
breaking the built-ins; :meth:`Registry.get` raises that reason when the name
is asked for.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Container, Generic, TypeVar

from hardseg.errors import one_line

T = TypeVar("T")


def load_entry_points(group: str, noun: str, *, known: Container[str], accept: Callable[[object], bool],
                      expected: str, register: Callable[[str, object], None], broken: dict[str, str]) -> None:
    """Register every entry point of ``group`` whose name is not ``known`` yet.

    Args:
        group: the entry-point group, e.g. ``hardseg.models``.
        noun: the word used in messages (``model``, ``strategy``, ``dataset``).
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
            broken[ep.name] = f"{noun} plugin '{ep.name}' ({ep.value}) failed to import: {one_line(exc)}"
            continue
        if not accept(obj):
            broken[ep.name] = f"{noun} plugin '{ep.name}' ({ep.value}) is not {expected}"
            continue
        register(ep.name, obj)


class Registry(Generic[T]):
    """Name -> object for one entry-point group.

    Args:
        group: the entry-point group, e.g. ``hardseg.models``.
        noun: the word used in messages (``model``, ``strategy``, ``dataset``).
        error: the exception type of a failed lookup (ConfigError, DataError).
        accept: whether a plugin's loaded object is usable.
        expected: what a usable object is, for the message.
        plugin: turns an accepted plugin object into what is registered, or returns the one-line reason
            it cannot be (the strategies' composition contract); default: the object as it is.
        builtins: registers the built-in objects, called once before the entry points are read
            (lets a registry whose built-ins need heavy modules import them on the first lookup).
    """

    def __init__(self, group: str, noun: str, *, error: type[Exception], accept: Callable[[object], bool],
                 expected: str, plugin: Callable[[str, object], "T | str"] | None = None,
                 builtins: Callable[[], object] | None = None):
        self.group, self.noun, self.error = group, noun, error
        self.builtins = builtins
        self.accept, self.expected, self.plugin = accept, expected, plugin
        self.items: dict[str, T] = {}
        self.broken: dict[str, str] = {}  # plugin name -> why it could not be used
        self.loaded = False

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a second, different object of that name is an error."""
        if name in self.items and self.items[name] is not obj:
            owner = getattr(self.items[name], "__module__", None)
            raise ValueError(f"{self.noun} '{name}' is already registered" + (f" by {owner}" if owner else ""))
        self.items[name] = obj
        return obj

    def load(self) -> None:
        """Read the group's entry points (once per process; the built-ins win a name clash)."""
        if self.loaded:
            return
        self.loaded = True
        if self.builtins is not None:
            self.builtins()
        load_entry_points(self.group, self.noun, known=self.items, accept=self.accept, expected=self.expected,
                          register=self._add_plugin, broken=self.broken)

    def _add_plugin(self, name: str, obj: object) -> None:
        made = self.plugin(name, obj) if self.plugin is not None else obj
        if isinstance(made, str):
            self.broken[name] = made
        else:
            self.add(name, made)

    def names(self) -> list[str]:
        self.load()
        return sorted(self.items)

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot be used (a broken plugin, or unknown: the known names listed), or None."""
        self.load()
        if name in self.items:
            return None
        if name in self.broken:
            return self.broken[name].splitlines()[0]
        return f"unknown {self.noun} '{name}'; allowed: {', '.join(self.names())}"

    def get(self, name: str) -> T:
        """The object called ``name``; ``error`` (one line saying why) otherwise."""
        problem = self.problem(name)
        if problem is not None:
            raise self.error(problem)
        return self.items[name]

"""Name → dataset format, plus third-party formats from entry points.

A format says how to read one dataset layout: its class table, its splits and
a reader (:class:`~hardseg.data.base.Source`) per split. The built-in formats
(``synthetic``, ``cityscapes``, ``folder``, ``ade20k``, ``voc``, ``gta5``,
``foggy_cityscapes``, ``acdc``, ``dark_zurich``; see docs/datasets.md) register
themselves with :func:`register_dataset` when :mod:`hardseg.data.formats` is
imported, which this registry does on its first lookup, just before it reads the entry points:
the formats' readers need numpy, torch and scipy, and a config check imports this module. A third-party package adds one by
declaring an entry point in the ``hardseg.datasets`` group whose object is a
:class:`DatasetFormat`::

    [project.entry-points."hardseg.datasets"]
    my_set = "my_pkg.data:MY_FORMAT"

``data.dataset`` and the ``KIND:PATH`` evaluation domains are looked up here, so
an installed plugin is accepted everywhere a built-in name is. A plugin that
fails to import does not break the built-ins: naming it raises a one-line
:class:`~hardseg.errors.DataError` that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hardseg.errors import DataError
from hardseg.plugins import Registry

if TYPE_CHECKING:
    from hardseg.data.config import DataConfig
    from hardseg.data.base import Source
    from hardseg.data.info import DatasetInfo

ENTRY_POINT_GROUP = "hardseg.datasets"


@dataclass(frozen=True)
class DatasetFormat:
    """How to read one dataset layout.

    Attributes:
        name: what users type as ``data.dataset`` and as the ``KIND`` of ``KIND:PATH`` domains.
        source: ``(root, split, variant, cfg, strict=True) -> Source``; ``variant`` is a domain's
            extra argument (ACDC's condition, Foggy Cityscapes' beta) or None; ``strict=False``
            lists pairs whose mask is missing instead of raising (``hardseg data check`` counts them).
        info: ``(root, cfg) -> DatasetInfo`` without reading images.
        splits: ``(root, cfg) -> split names``; DataError when the root is missing.
        variants: the allowed variants (empty: the format takes none).
        variant_required: a ``KIND:PATH`` domain must name a variant (ACDC's condition).
        variant_key: the variant is written ``KEY=VALUE`` (``beta=0.02``); empty: bare (``night``).
        domain_name: ``(root, variant, split) -> default metric name`` of a domain; None: the folder name.
        expand_variants: a domain without a variant becomes one domain per variant,
            named ``<name>-1`` … ``<name>-N`` (a severity family, like Foggy Cityscapes' betas).
        layout: one line describing the expected layout (for ``--help`` and errors).
    """

    name: str
    source: Callable[..., "Source"]
    info: Callable[[Path, "DataConfig"], "DatasetInfo"]
    splits: Callable[[Path, "DataConfig"], list[str]]
    variants: tuple[str, ...] = ()
    variant_required: bool = False
    variant_key: str = ""
    domain_name: Callable[[Path, "str | None", str], str] | None = None
    expand_variants: bool = False
    layout: str = ""
    path_domain: bool = field(default=True)  # False: no KIND:PATH domains (the synthetic set)


def _named(name: str, fmt: DatasetFormat) -> DatasetFormat:
    """An entry point's format under the entry point's name."""
    return fmt if fmt.name == name else DatasetFormat(**{**fmt.__dict__, "name": name})


def _register_builtins() -> None:
    """Import :mod:`hardseg.data.formats`, which registers the built-in formats here. By name, like an
    entry point: formats imports this module, and this one must stay importable without formats' readers."""
    import_module("hardseg.data.formats")


FORMATS: Registry[DatasetFormat] = Registry(
    ENTRY_POINT_GROUP, "dataset", error=DataError, expected="a hardseg DatasetFormat",
    accept=lambda obj: isinstance(obj, DatasetFormat), plugin=_named, builtins=_register_builtins)


def register_dataset(fmt: DatasetFormat) -> DatasetFormat:
    """Add ``fmt`` under ``fmt.name`` (a second, different format of that name is an error)."""
    return FORMATS.add(fmt.name, fmt)


def available_datasets() -> list[str]:
    return FORMATS.names()


def get_dataset(name: str) -> DatasetFormat:
    """The format called ``name``; DataError listing the known ones otherwise."""
    return FORMATS.get(name)

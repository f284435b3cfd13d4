"""Evaluation domains: a dataset's own splits or another dataset with the same label space.

A domain spec is one of

* a split of the training dataset: ``val``, ``fog-1`` … ``fog-5``, ``night-3``,
  ``target`` for the synthetic benchmark;
* ``cityscapes:PATH[:SPLIT]`` or ``folder:PATH[:SPLIT]``: a split (``val`` by
  default) of a Cityscapes-format or folder-format dataset at ``PATH``, e.g. a
  foggy or night copy of Cityscapes for a Cityscapes model;
* either of these after ``NAME=``, to choose the name its metrics carry.

Metrics are named ``<name>/<metric>``. A split's name is the split itself; a
path spec is named after the folder (``folder:/data/foggy-2`` → ``foggy-2``,
with ``_<split>`` appended for a split other than ``val``), so that
``<family>-<severity>`` names group into robustness families like the synthetic
shifts. Names are checked to be unique, not one of :data:`RESERVED`, and ``val`` only for
the training set's own ``val`` split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hardseg.config import DataConfig
from hardseg.errors import DataError

PATH_KINDS = ("cityscapes", "folder")
# Metric prefixes the loop uses itself; a domain of that name would overwrite them.
RESERVED = ("train", "best", "robustness", "lr", "epoch")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Domain:
    """A parsed domain spec: ``name`` for metric keys, and where its data is."""

    spec: str
    name: str
    dataset: str | None = None  # None: a split of the training dataset
    root: str | None = None
    split: str = "val"


def parse_domain(spec: str) -> Domain:
    """Parse one spec (module docstring); a malformed one raises :class:`DataError`."""
    name, eq, rest = spec.partition("=")
    if not eq:
        name, rest = "", spec
    kind, colon, tail = rest.partition(":")
    if colon and kind in PATH_KINDS:
        if not tail:
            raise DataError(f"evaluation domain '{spec}': give a path, e.g. {kind}:/data/foggy[:val]")
        root, sep, split = tail.rpartition(":")
        if not sep or not root or "/" in split:
            root, split = tail, ""
        folder = Path(root).expanduser().name or "domain"
        default = re.sub(r"[^A-Za-z0-9_.-]", "_", folder) + (f"_{split}" if split and split != "val" else "")
        domain = Domain(spec, name or default, kind, str(Path(root).expanduser()), split or "val")
    elif colon:
        raise DataError(f"evaluation domain '{spec}': unknown kind '{kind}' (use {' or '.join(k + ':PATH' for k in PATH_KINDS)})")
    else:
        domain = Domain(spec, name or rest, split=rest)
    clashes = domain.name in RESERVED or (domain.name == "val" and (domain.dataset or domain.split != "val"))
    if not _NAME.fullmatch(domain.name) or clashes:
        raise DataError(f"evaluation domain '{spec}': '{domain.name}' cannot name metrics (letters, digits, _ . - "
                        f"only; not val unless it is the val split, not {', '.join(RESERVED)}); write NAME={spec}")
    return domain


def absolute_spec(spec: str, base: Path) -> str:
    """``spec`` with a relative PATH taken from ``base`` (Ray workers run in another directory)."""
    d = parse_domain(spec)
    return spec if d.dataset is None else f"{d.name}={d.dataset}:{(base / d.root).resolve()}:{d.split}"


def parse_domains(specs: list[str]) -> list[Domain]:
    """Parse every spec; two specs with one name raise :class:`DataError`."""
    domains = [parse_domain(s) for s in specs]
    seen: dict[str, str] = {}
    for d in domains:
        if d.name in seen:
            raise DataError(f"evaluation domains '{seen[d.name]}' and '{d.spec}' are both named '{d.name}'; "
                            f"name one with NAME=SPEC")
        seen[d.name] = d.spec
    return domains


def domain_config(cfg: DataConfig, domain: Domain) -> DataConfig:
    """The data config whose split ``domain.split`` is the domain (no augmentation is applied to it)."""
    if domain.dataset is None:
        return cfg
    return cfg.model_copy(update={"dataset": domain.dataset, "root": str(Path(domain.root).absolute())})


def build_domain(cfg: DataConfig, domain: Domain | str):
    """The domain's dataset, checked to share the training set's label space.

    Raises:
        DataError: missing data, unknown split, or a different number of classes.
    """
    from hardseg.data import build_dataset, dataset_info

    domain = parse_domain(domain) if isinstance(domain, str) else domain
    try:
        ds = build_dataset(domain_config(cfg, domain), domain.split, train=False)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise DataError(f"evaluation domain '{domain.spec}': {err}") from None
    want = dataset_info(cfg).num_classes
    if ds.info.num_classes != want:
        raise DataError(f"evaluation domain '{domain.spec}' has {ds.info.num_classes} classes; the model is "
                        f"trained on {want} (the same label space is needed)")
    return ds

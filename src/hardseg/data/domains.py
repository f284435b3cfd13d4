"""Evaluation domains: a dataset's own splits, corrupted copies of them, or another dataset with the same label space.

A domain spec is one of

* a split of the training dataset: ``val``, ``fog-1`` … ``fog-5``, ``night-3``,
  ``target`` for the synthetic benchmark;
* ``corrupt:<corruption>-<severity>[:SPLIT]``: the training dataset's split
  (``val`` by default) with an ImageNet-C corruption applied to every image
  (:mod:`hardseg.data.corruptions`; e.g. ``corrupt:gaussian_noise-3``), read from
  the corrupted copies ``hardseg data corrupt`` made when ``data.corruption_cache``
  names them or they lie beside the dataset (:mod:`hardseg.data.corruption_cache`), named
  ``corrupt.<corruption>-<severity>`` (so ImageNet-C's ``fog`` never mixes with
  the synthetic set's ``fog`` shift);
* ``KIND:PATH[:SPLIT]``: a split (``val`` by default) of a dataset of format
  ``KIND`` at ``PATH`` (any registered format: ``cityscapes``, ``folder``,
  ``ade20k``, ``voc``, ``gta5``, ``dark_zurich``, plugins), named after the
  folder (``cityscapes``, ``folder``) or the format (the others), with
  ``_<split>`` appended for a split other than ``val``;
* ``acdc:PATH:<condition>[:SPLIT]`` (``fog``, ``night``, ``rain``, ``snow``),
  named ``acdc_<condition>``;
* ``foggy_cityscapes:PATH[:beta=B][:SPLIT]``: one beta (0.005, 0.01, 0.02), or
  without ``beta=`` all three as ``foggy-1`` … ``foggy-3``;
* any of these after ``NAME=``, to choose the name its metrics carry.

Metrics are named ``<name>/<metric>``; ``<family>-<severity>`` names group into
robustness families like the synthetic shifts. Names are checked to be unique,
not one of :data:`RESERVED`, and ``val`` only for the training set's own ``val``
split. A ``PATH`` may not contain ``:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from hardseg.data import SegmentationDataset, Source, build_source, dataset_info
from hardseg.data.config import DataConfig
from hardseg.data.corruption_cache import cached_source
from hardseg.data.corruptions import CORRUPTIONS, SEVERITIES, check_frost_files
from hardseg.data.formats import folder_name
from hardseg.data.registry import available_datasets, get_dataset
from hardseg.errors import DataError
from hardseg.keys import CORRUPT_PREFIX

CORRUPT = "corrupt"
# Metric prefixes the loop uses itself; a domain of that name would overwrite them.
RESERVED = ("train", "best", "robustness", "lr", "epoch", "test", "corruption")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Domain:
    """A parsed domain spec: ``name`` for metric keys, and where its data is."""

    spec: str
    name: str
    dataset: str | None = None  # None: a split of the training dataset
    root: str | None = None
    split: str = "val"
    variant: str | None = None  # ACDC's condition, Foggy Cityscapes' beta
    corruption: tuple[str, int] | None = None  # (name, severity) applied to every image


def _path_domain(spec: str, name: str, dataset: str, tail: str) -> Domain:
    fmt = get_dataset(dataset)
    if not fmt.path_domain:
        raise DataError(f"evaluation domain '{spec}': dataset '{dataset}' has no path form; name its splits directly")
    root, *args = tail.split(":")
    if not root:
        raise DataError(f"evaluation domain '{spec}': give a path, e.g. {dataset}:/data/{dataset}[:val]")
    variant = None
    if fmt.variants and args:
        key = f"{fmt.variant_key}=" if fmt.variant_key else ""
        if (key and args[0].startswith(key)) or (not key and args[0] in fmt.variants):
            variant = args.pop(0)[len(key):]
            if variant not in fmt.variants:
                raise DataError(f"evaluation domain '{spec}': {fmt.variant_key or 'variant'} '{variant}' is not one "
                                f"of {', '.join(fmt.variants)}")
    if fmt.variant_required and variant is None:
        raise DataError(f"evaluation domain '{spec}': name one of {', '.join(fmt.variants)}, e.g. "
                        f"{dataset}:{root}:{fmt.variants[0]}[:val]")
    if len(args) > 1:
        raise DataError(f"evaluation domain '{spec}': too many ':' parts (write {dataset}:PATH[:SPLIT])")
    split = args[0] if args else "val"
    root_path = Path(root).expanduser()
    if name:
        if variant and fmt.expand_variants:
            name = f"{name}-{fmt.variants.index(variant) + 1}"
    elif fmt.domain_name is not None:
        name = fmt.domain_name(root_path, variant, split)
    else:
        name = folder_name(root_path, variant, split)
    return Domain(spec, name, dataset, str(root_path), split, variant)


def _corrupt_domain(spec: str, name: str, tail: str) -> Domain:
    what, _, split = tail.partition(":")
    corruption, _, severity = what.rpartition("-")
    if corruption not in CORRUPTIONS or not severity.isdigit() or int(severity) not in SEVERITIES:
        raise DataError(f"evaluation domain '{spec}': write corrupt:<name>-<severity> with a severity 1-5 and a "
                        f"name of {', '.join(CORRUPTIONS)}")
    if corruption == "frost":  # its photographs come from a local folder: missing ones fail before anything runs
        try:
            check_frost_files()
        except ValueError as err:
            raise DataError(f"evaluation domain '{spec}': {err}") from None
    split = split or "val"
    default = f"{CORRUPT_PREFIX}{corruption}-{severity}" + ("" if split == "val" else f"_{split}")
    return Domain(spec, name or default, None, None, split, corruption=(corruption, int(severity)))


def parse_domain(spec: str) -> Domain:
    """Parse one spec (module docstring); a malformed one raises :class:`DataError`."""
    name, eq, rest = spec.partition("=")
    if not eq or ":" in name:
        name, rest = "", spec
    kind, colon, tail = rest.partition(":")
    if colon and kind == CORRUPT:
        domain = _corrupt_domain(spec, name, tail)
    elif colon:
        if kind not in available_datasets():
            kinds = [k for k in available_datasets() if k != "synthetic"]
            raise DataError(f"evaluation domain '{spec}': unknown kind '{kind}' (use corrupt:<name>-<severity> or "
                            f"{', '.join(k + ':PATH' for k in kinds)})")
        domain = _path_domain(spec, name, kind, tail)
    else:
        domain = Domain(spec, name or rest, split=rest)
    clashes = domain.name in RESERVED or (domain.name == "val" and (domain.dataset or domain.split != "val"
                                                                     or domain.corruption))
    if not _NAME.fullmatch(domain.name) or clashes:
        raise DataError(f"evaluation domain '{spec}': '{domain.name}' cannot name metrics (letters, digits, _ . - "
                        f"only; not val unless it is the val split, not {', '.join(RESERVED)}); write NAME={spec}"
                        + ("; the held-out test split goes to data.test_split" if domain.name == "test" else ""))
    return domain


def expand(domain: Domain) -> list[Domain]:
    """One domain per variant for a format whose variants are severities (Foggy Cityscapes' betas)."""
    if domain.dataset is None or domain.variant is not None:
        return [domain]
    fmt = get_dataset(domain.dataset)
    if not fmt.expand_variants:
        return [domain]
    tail = f"_{domain.split}" if domain.split != "val" and domain.name.endswith(f"_{domain.split}") else ""
    base = domain.name[: len(domain.name) - len(tail)]
    return [replace(domain, variant=v, name=f"{base}-{i}{tail}") for i, v in enumerate(fmt.variants, 1)]


def absolute_spec(spec: str, base: Path) -> str:
    """``spec`` with a relative PATH taken from ``base`` (Ray workers run in another directory)."""
    d = parse_domain(spec)
    if d.dataset is None:
        return spec
    variant = ""
    if d.variant is not None:
        key = get_dataset(d.dataset).variant_key
        variant = f":{key}={d.variant}" if key else f":{d.variant}"
        name = d.name.rpartition("-")[0] if get_dataset(d.dataset).expand_variants else d.name
    else:
        name = d.name
    return f"{name}={d.dataset}:{(base / d.root).resolve()}{variant}:{d.split}"


def parse_domains(specs: list[str]) -> list[Domain]:
    """Parse every spec; two specs with one name raise :class:`DataError`."""
    domains = [e for s in specs for e in expand(parse_domain(s))]
    seen: dict[str, str] = {}
    for d in domains:
        if d.name in seen:
            raise DataError(f"evaluation domains '{seen[d.name]}' and '{d.spec}' are both named '{d.name}'; "
                            f"name one with NAME=SPEC")
        seen[d.name] = d.spec
    return domains


def domain_config(cfg: DataConfig, domain: Domain) -> DataConfig:
    """The data config whose split ``domain.split`` is the domain (no augmentation is applied to it)."""
    if domain.dataset is None:  # the training set's split, corrupted or not
        return cfg
    return cfg.model_copy(update={"dataset": domain.dataset, "root": str(Path(domain.root).absolute())})


def domain_source(cfg: DataConfig, domain: Domain | str) -> Source:
    """The domain's raw reader (:func:`hardseg.data.build_source`, from the corruption cache for a corrupted
    domain), checked to share the training set's label space.

    Raises:
        DataError: missing data, unknown split, or a different number of classes.
    """
    domain = parse_domain(domain) if isinstance(domain, str) else domain
    try:
        source = build_source(domain_config(cfg, domain), domain.split, domain.variant)
        if domain.corruption is not None:  # from the corruption cache if there is one (corruption_cache.py)
            source = cached_source(domain_config(cfg, domain), source, domain.split, *domain.corruption)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise DataError(f"evaluation domain '{domain.spec}': {err}") from None
    want = dataset_info(cfg).num_classes
    if source.info.num_classes != want:
        raise DataError(f"evaluation domain '{domain.spec}' has {source.info.num_classes} classes; the model is "
                        f"trained on {want} (the same label space is needed)")
    return source


def build_domain(cfg: DataConfig, domain: Domain | str) -> SegmentationDataset:
    """The domain's dataset (:func:`domain_source` with the evaluation transform)."""
    from hardseg.data.transforms import EvalTransform  # local: torchvision costs ~2 s; a driver reads sources only

    return SegmentationDataset(domain_source(cfg, domain), EvalTransform())

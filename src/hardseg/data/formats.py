"""The built-in dataset formats, registered in :mod:`hardseg.data.registry` (layouts: docs/datasets.md)."""

from __future__ import annotations

import re
from pathlib import Path

from hardseg.data import driving, scenes
from hardseg.data.cityscapes import CITYSCAPES_INFO, CityscapesSource
from hardseg.data.cityscapes import LAYOUT_HELP as CITYSCAPES_LAYOUT
from hardseg.data.cityscapes import available_splits as cityscapes_splits
from hardseg.data.folder import LAYOUT_HELP as FOLDER_LAYOUT
from hardseg.data.folder import FolderSource, load_classes
from hardseg.data.folder import available_splits as folder_splits
from hardseg.data.registry import DatasetFormat, register_dataset
from hardseg.data.synthetic import SPLITS as SYNTHETIC_SPLITS
from hardseg.data.synthetic import SYNTHETIC_INFO, SyntheticSource, ensure_synthetic
from hardseg.errors import DataError


def _suffix(split: str) -> str:
    return "" if split == "val" else f"_{split}"


def folder_name(root: Path, variant: str | None, split: str) -> str:
    """The default metric name of a path domain: its folder's name, ``_<split>`` for a split other than val."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(root).name or "domain") + _suffix(split)


def _fixed(name: str):
    return lambda root, variant, split: name + _suffix(split)


def _synthetic_source(root, split, variant, cfg, strict=True):
    if split not in SYNTHETIC_SPLITS:
        raise DataError(f"unknown split '{split}' for dataset 'synthetic'; available: {', '.join(SYNTHETIC_SPLITS)}")
    return SyntheticSource(ensure_synthetic(root, cfg.synthetic), split)


def _cityscapes_splits(root, cfg):
    if not root.is_dir():
        raise DataError(f"Cityscapes root not found: {root}")
    return cityscapes_splits(root)


def _folder_splits(root, cfg):
    load_classes(root)  # checks the root and classes.yaml
    return folder_splits(root)


def _foggy_name(root, beta, split):
    return f"foggy-{driving.FOGGY_BETAS.index(beta) + 1}{_suffix(split)}" if beta else "foggy" + _suffix(split)


register_dataset(DatasetFormat(
    "synthetic", _synthetic_source, lambda root, cfg: SYNTHETIC_INFO, lambda root, cfg: list(SYNTHETIC_SPLITS),
    layout="generated under data.root by 'hardseg data generate'", path_domain=False))
register_dataset(DatasetFormat(
    "cityscapes", lambda root, split, v, cfg, strict=True: CityscapesSource(root, split, strict), lambda root, cfg: CITYSCAPES_INFO,
    _cityscapes_splits, layout=CITYSCAPES_LAYOUT))
register_dataset(DatasetFormat(
    "folder", lambda root, split, v, cfg, strict=True: FolderSource(root, split, strict), lambda root, cfg: load_classes(root),
    _folder_splits, layout=FOLDER_LAYOUT))
register_dataset(DatasetFormat(
    "ade20k", lambda root, split, v, cfg, strict=True: scenes.ADE20KSource(root, split, strict), lambda root, cfg: scenes.ADE20K_INFO,
    lambda root, cfg: scenes.ade20k_splits(root), domain_name=_fixed("ade20k"), layout=scenes.ADE20K_LAYOUT))
register_dataset(DatasetFormat(
    "voc", lambda root, split, v, cfg, strict=True: scenes.VOCSource(root, split, strict), lambda root, cfg: scenes.VOC_INFO,
    lambda root, cfg: scenes.voc_splits(root), domain_name=_fixed("voc"), layout=scenes.VOC_LAYOUT))
register_dataset(DatasetFormat(
    "gta5", lambda root, split, v, cfg, strict=True: driving.GTA5Source(root, split, strict), lambda root, cfg: CITYSCAPES_INFO,
    lambda root, cfg: driving.gta5_splits(root), domain_name=_fixed("gta5"), layout=driving.GTA5_LAYOUT))
register_dataset(DatasetFormat(
    "foggy_cityscapes", lambda root, split, beta, cfg, strict=True: driving.FoggyCityscapesSource(root, split, beta, strict),
    lambda root, cfg: CITYSCAPES_INFO, lambda root, cfg: driving.foggy_splits(root),
    variants=driving.FOGGY_BETAS, variant_key="beta", domain_name=_foggy_name, expand_variants=True,
    layout=driving.FOGGY_LAYOUT))
register_dataset(DatasetFormat(
    "acdc", lambda root, split, cond, cfg, strict=True: driving.acdc_source(root, split, cond, strict), lambda root, cfg: CITYSCAPES_INFO,
    lambda root, cfg: driving.acdc_splits(root), variants=driving.ACDC_CONDITIONS, variant_required=True,
    domain_name=lambda root, cond, split: f"acdc_{cond}{_suffix(split)}", layout=driving.ACDC_LAYOUT))
register_dataset(DatasetFormat(
    "dark_zurich", lambda root, split, v, cfg, strict=True: driving.dark_zurich_source(root, split, strict),
    lambda root, cfg: CITYSCAPES_INFO, lambda root, cfg: driving.dark_zurich_splits(root),
    domain_name=_fixed("dark_zurich"), layout=driving.DZ_LAYOUT))

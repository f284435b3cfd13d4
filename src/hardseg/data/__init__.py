"""Datasets: the synthetic hard-pixel benchmark, Cityscapes and a generic folder format.

Public API::

    build_dataset(cfg: DataConfig, split, *, train) -> SegmentationDataset
    dataset_info(cfg) -> DatasetInfo
    available_splits(cfg) -> list[str]
    class_pixel_frequencies(dataset_or_cfg) -> np.ndarray   # int64 pixels per class

``SegmentationDataset[i]`` returns ``(image float32 (3, H, W), mask int64 (H, W))``;
the image is normalised with :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` and
the mask holds class ids with 255 = ignore. With ``train=True`` the
augmentation of ``cfg.augment`` is applied (see :mod:`hardseg.data.transforms`).

For ``dataset: synthetic`` the set is generated under ``cfg.root`` on first
use (see :func:`ensure_synthetic`; relative roots are taken from the working
directory) and memory-mapped afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardseg.config import DataConfig
from hardseg.data.base import SegmentationDataset, Source
from hardseg.data.cityscapes import CITYSCAPES_INFO, CityscapesSource
from hardseg.data.cityscapes import available_splits as _cityscapes_splits
from hardseg.data.folder import FolderSource, load_classes
from hardseg.data.folder import available_splits as _folder_splits
from hardseg.data.info import DatasetInfo
from hardseg.data.synthetic import (
    SPLITS as SYNTHETIC_SPLITS,
    SYNTHETIC_INFO,
    SyntheticSource,
    ensure_synthetic,
    generate_command,
    generate_synthetic,
)
from hardseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from hardseg.errors import DataError

__all__ = [
    "DatasetInfo",
    "SegmentationDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_INFO",
    "CITYSCAPES_INFO",
    "build_dataset",
    "build_source",
    "dataset_info",
    "available_splits",
    "class_pixel_frequencies",
    "ensure_synthetic",
    "generate_synthetic",
    "generate_command",
    "resolve_root",
]


def resolve_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as an absolute path (relative roots are taken from the working directory)."""
    return Path(cfg.root).expanduser().absolute()


def build_source(cfg: DataConfig, split: str) -> Source:
    """The raw (untransformed) reader of one split."""
    root = resolve_root(cfg)
    if cfg.dataset == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise DataError(f"unknown split '{split}' for dataset 'synthetic'; available: {', '.join(SYNTHETIC_SPLITS)}")
        return SyntheticSource(ensure_synthetic(root, cfg.synthetic), split)
    if cfg.dataset == "cityscapes":
        return CityscapesSource(root, split)
    if cfg.dataset == "folder":
        return FolderSource(root, split)
    raise DataError(f"unknown dataset '{cfg.dataset}'")  # pragma: no cover - DataConfig forbids it


def build_dataset(cfg: DataConfig, split: str, *, train: bool) -> SegmentationDataset:
    """One split as a torch Dataset; ``train=True`` adds the augmentation of ``cfg.augment``.

    Raises:
        DataError: missing/malformed data, or an unknown split (the message lists the available ones).
    """
    return SegmentationDataset(build_source(cfg, split), build_transform(cfg.augment, train=train))


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Class names, hard-class groups and hierarchy, without loading any image."""
    if cfg.dataset == "synthetic":
        return SYNTHETIC_INFO
    if cfg.dataset == "cityscapes":
        return CITYSCAPES_INFO
    return load_classes(resolve_root(cfg))


def available_splits(cfg: DataConfig) -> list[str]:
    """Split names usable with :func:`build_dataset`."""
    root = resolve_root(cfg)
    if cfg.dataset == "synthetic":
        return list(SYNTHETIC_SPLITS)
    if cfg.dataset == "cityscapes":
        if not root.is_dir():
            raise DataError(f"Cityscapes root not found: {root}")
        return _cityscapes_splits(root)
    load_classes(root)  # checks the root and classes.yaml
    return _folder_splits(root)


def class_pixel_frequencies(dataset_or_cfg: SegmentationDataset | DataConfig) -> np.ndarray:
    """Pixels per class (int64 array of length ``num_classes``; ignored pixels excluded).

    Given a :class:`DataConfig`, counts the ``train`` split; given a dataset,
    counts that dataset's own (untransformed) masks. For the synthetic set the
    counts are read from ``meta.json`` and cost nothing.
    """
    if isinstance(dataset_or_cfg, DataConfig):
        return build_source(dataset_or_cfg, "train").class_pixel_counts()
    if isinstance(dataset_or_cfg, SegmentationDataset):
        return dataset_or_cfg.class_pixel_counts()
    raise TypeError(f"expected a SegmentationDataset or DataConfig, got {type(dataset_or_cfg).__name__}")

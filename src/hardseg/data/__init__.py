"""Datasets: the synthetic hard-pixel benchmark, Cityscapes, ADE20K, VOC, GTA5, Foggy Cityscapes, ACDC,
Dark Zurich and a generic folder format, looked up by name in :mod:`hardseg.data.registry`
(plugins: the ``hardseg.datasets`` entry-point group; layouts: docs/datasets.md).

Public API::

    build_dataset(cfg: DataConfig, split, *, train, variant=None) -> SegmentationDataset
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

The settings (``DataConfig``, ``SyntheticConfig``, ``AugmentConfig``) live in
:mod:`hardseg.data.config`; :mod:`hardseg.config` assembles and re-exports them.

Importing this package is cheap: the readers (torch, torchvision, scipy, scikit-image) load on the
first use of a name that needs them (:data:`_LAZY`, PEP 562), because ``hardseg.data.config`` and
``hardseg.data.registry`` sit inside this package and every ``--set`` check imports them. The
built-in formats (:mod:`hardseg.data.formats`) register on the registry's first lookup.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardseg.data.config import DataConfig
from hardseg.data.registry import DatasetFormat, available_datasets, get_dataset, register_dataset

if TYPE_CHECKING:
    import numpy as np

    from hardseg.data.base import SegmentationDataset, Source
    from hardseg.data.info import DatasetInfo

# Public names whose modules need numpy/torch/torchvision/scipy: name -> module, imported on first access.
_LAZY = {
    "DatasetInfo": "hardseg.data.info",
    "SegmentationDataset": "hardseg.data.base",
    "Source": "hardseg.data.base",
    "CITYSCAPES_INFO": "hardseg.data.cityscapes",
    "SYNTHETIC_INFO": "hardseg.data.synthetic",
    "ensure_synthetic": "hardseg.data.synthetic",
    "generate_command": "hardseg.data.synthetic",
    "generate_synthetic": "hardseg.data.synthetic",
    "IMAGENET_MEAN": "hardseg.data.normalisation",
    "IMAGENET_STD": "hardseg.data.normalisation",
    "build_transform": "hardseg.data.transforms",
}


def __getattr__(name: str) -> Any:
    """The heavy public names of :data:`_LAZY`, imported when first asked for (PEP 562)."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "DatasetFormat",
    "available_datasets",
    "get_dataset",
    "register_dataset",
]


def resolve_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as an absolute path (relative roots are taken from the working directory)."""
    return Path(cfg.root).expanduser().absolute()


def build_source(cfg: DataConfig, split: str, variant: str | None = None, *, strict: bool = True) -> Source:
    """The raw (untransformed) reader of one split (``variant``: ACDC's condition, Foggy Cityscapes' beta)."""
    return get_dataset(cfg.dataset).source(resolve_root(cfg), split, variant, cfg, strict=strict)


def build_dataset(cfg: DataConfig, split: str, *, train: bool, variant: str | None = None) -> SegmentationDataset:
    """One split as a torch Dataset; ``train=True`` adds the augmentation of ``cfg.augment``.

    Raises:
        DataError: missing/malformed data, or an unknown split (the message lists the available ones).
    """
    # local: torch and torchvision load with the first dataset, not with the package (module docstring)
    from hardseg.data.base import SegmentationDataset
    from hardseg.data.transforms import build_transform

    return SegmentationDataset(build_source(cfg, split, variant), build_transform(cfg.augment, train=train))


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Class names, hard-class groups and hierarchy, without loading any image."""
    return get_dataset(cfg.dataset).info(resolve_root(cfg), cfg)


def available_splits(cfg: DataConfig) -> list[str]:
    """Split names usable with :func:`build_dataset`."""
    return get_dataset(cfg.dataset).splits(resolve_root(cfg), cfg)


def class_pixel_frequencies(dataset_or_cfg: SegmentationDataset | DataConfig) -> np.ndarray:
    """Pixels per class (int64 array of length ``num_classes``; ignored pixels excluded).

    Given a :class:`DataConfig`, counts the ``train`` split; given a dataset,
    counts that dataset's own (untransformed) masks. For the synthetic set the
    counts are read from ``meta.json`` and cost nothing.
    """
    # local: torch loads with the first dataset, not with the package (module docstring)
    from hardseg.data.base import SegmentationDataset

    if isinstance(dataset_or_cfg, DataConfig):
        return build_source(dataset_or_cfg, "train").class_pixel_counts()
    if isinstance(dataset_or_cfg, SegmentationDataset):
        return dataset_or_cfg.class_pixel_counts()
    raise TypeError(f"expected a SegmentationDataset or DataConfig, got {type(dataset_or_cfg).__name__}")

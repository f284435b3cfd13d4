"""The dataset class shared by all formats, and checked file readers.

A *source* knows one split of one dataset on disk and yields raw items:
``load(i) -> (image uint8 (H, W, 3), mask uint8 (H, W))`` with the mask in
class ids (``info.ignore_index`` = ignore). :class:`SegmentationDataset` wraps a
source and a transform into a ``torch.utils.data.Dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hardseg.data.info import DatasetInfo
from hardseg.errors import DataError, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class Source(Protocol):
    info: DatasetInfo
    split: str

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def load_mask(self, index: int) -> np.ndarray: ...

    def validate(self) -> None: ...

    def class_pixel_counts(self) -> np.ndarray: ...


class SegmentationDataset(torch.utils.data.Dataset):
    """One split of a dataset: ``ds[i] -> (image float32 (3, H, W), mask int64 (H, W))``.

    The image is normalised with the ImageNet mean/std; the mask holds class
    ids with ``info.ignore_index`` (255) for ignored pixels.
    """

    def __init__(self, source: Source, transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.source = source
        self.transform = transform

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    @property
    def split(self) -> str:
        return self.source.split

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image, mask = self.source.load(int(index) % len(self))
        return self.transform(image, mask)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed uint8 image (H, W, 3) and mask (H, W)."""
        return self.source.load(int(index))

    def validate(self) -> None:
        """Scan every file of the split; raise :class:`DataError` at the first bad one."""
        self.source.validate()

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels per class (int64, length ``num_classes``; ignore excluded)."""
        return self.source.class_pixel_counts()

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.info.name!r}, split={self.split!r}, n={len(self)}, transform={self.transform!r})"


def count_classes(masks: Any, num_classes: int) -> np.ndarray:
    """Per-class pixel counts over an iterable of uint8 masks (ids >= num_classes dropped)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for m in masks:
        counts += np.bincount(np.asarray(m).ravel(), minlength=256)[:num_classes]
    return counts


# --------------------------------------------------------------------------
# Checked readers


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array; DataError naming the file when unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {_reason(exc)}") from None


def read_mask(path: Path) -> np.ndarray:
    """A single-channel uint8 (H, W) label array; DataError naming the file otherwise."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"mask {path} has mode {mode}; expected a single-channel PNG (mode L or P) of class ids")
            arr = np.asarray(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path}: {_reason(exc)}") from None
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            bad = int(arr.max()) if arr.max() > 255 else int(arr.min())
            raise DataError(f"mask {path}: label id {bad} does not fit 0..255")
        arr = arr.astype(np.uint8)
    return arr


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, after PIL's integrity check."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {_reason(exc)}") from None


def check_sizes(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} px but image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]} px (they must match)"
        )


def _reason(exc: BaseException) -> str:
    return one_line(exc, typed=False).replace(" '" + str(getattr(exc, "filename", "")) + "'", "")


def list_split_dirs(parent: Path) -> list[str]:
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def identity_lut(num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Label lookup table for masks that already hold class ids: ``0..n-1`` and ``ignore_index``
    map to themselves, every other value to -1 (unknown)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path | str, unknown: str) -> np.ndarray:
    """``lut[raw]`` as uint8; a raw id whose entry is -1 raises DataError naming ``path`` and the id.

    ``unknown`` completes the message after ``label id N``, e.g. ``"is not a VOC class (0-20, 255)"``.
    """
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = [int(v) for v in np.unique(raw[mapped < 0])]
        more = f"; other unknown ids: {', '.join(map(str, bad[1:6]))}" if len(bad) > 1 else ""
        raise DataError(f"mask {path}: label id {bad[0]} {unknown}{more}")
    return mapped.astype(np.uint8)


class PairedFileSource:
    """A split stored as image files with one mask file each (``images[i]`` ↔ ``masks[i]``).

    Subclasses fill ``images``, ``masks``, ``info``, ``lut`` (raw mask value → class id,
    255 = ignore, -1 = unknown id; see :func:`apply_lut`) and ``unknown_text``. A mask
    file may be missing while the pairs are listed; :meth:`require_masks` (called by
    every reader's constructor unless ``strict=False``, which ``hardseg data check``
    uses to count them) raises at the first one.
    """

    images: list[Path]
    masks: list[Path]
    info: Any
    lut: np.ndarray
    unknown_text: str = "is not a known label id"

    def __len__(self) -> int:
        return len(self.images)

    def missing_masks(self) -> list[tuple[Path, Path]]:
        """``(image, expected mask)`` for every image whose mask file does not exist."""
        return [(i, m) for i, m in zip(self.images, self.masks) if not m.is_file()]

    def require_masks(self) -> None:
        missing = self.missing_masks()
        if missing:
            img, mask = missing[0]
            more = f" ({len(missing) - 1} more images lack their mask)" if len(missing) > 1 else ""
            raise DataError(f"mask missing for image {img}: expected {mask}{more}")

    def raw_mask(self, index: int) -> np.ndarray:
        """The mask file's values before any id mapping."""
        return read_mask(self.masks[index])

    def load_mask(self, index: int) -> np.ndarray:
        return apply_lut(self.raw_mask(index), self.lut, self.masks[index], self.unknown_text)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.images[index])
        mask = self.load_mask(index)
        check_sizes(image, mask, self.images[index], self.masks[index])
        return image, mask

    def validate(self) -> None:
        """Read every mask and image header: a bad file raises DataError naming it. The class pixel
        counts are kept, so :meth:`class_pixel_counts` does not read the masks again."""
        counts = np.zeros(self.info.num_classes, dtype=np.int64)
        for i in range(len(self)):
            w, h = image_size(self.images[i])
            mask = self.load_mask(i)
            check_sizes(np.empty((h, w, 0)), mask, self.images[i], self.masks[i])
            counts += count_classes([mask], self.info.num_classes)
        self._counts = counts

    def class_pixel_counts(self) -> np.ndarray:
        cached = getattr(self, "_counts", None)
        if cached is not None:
            return cached.copy()
        return count_classes((self.load_mask(i) for i in range(len(self))), self.info.num_classes)

    def files(self) -> list[Path]:
        """Every file the split reads (for lineage digests)."""
        return [p for pair in zip(self.images, self.masks) for p in pair]


def read_split_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file; DataError naming the file when absent or empty."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"split list {path} is empty (one image name per line expected)")
    return names

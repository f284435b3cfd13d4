"""Driving datasets in the Cityscapes label space (19 train ids), read in the layouts as distributed.

All of them share :data:`~hardseg.data.cityscapes.CITYSCAPES_INFO`, so a model
trained on one is evaluated on the others (docs/datasets.md):

GTA5 (Richter et al. 2016), ``root`` = the folder holding ``images/`` and ``labels/``::

    <root>/images/00001.png           <root>/labels/00001.png   (Cityscapes label ids 0-33)
    <root>/split.mat                  optional: the official trainIds / valIds / testIds

  Without ``split.mat`` the split is deterministic: images sorted by name, every
  10th (positions 9, 19, 29, … counted from 0) is ``val``, the rest ``train``;
  with fewer than 10 images, the last one is ``val``.

Foggy Cityscapes (Sakaridis et al. 2018), ``root`` = the Cityscapes root that also holds it::

    <root>/leftImg8bit_foggy/<split>/<city>/<name>_leftImg8bit_foggy_beta_{0.005,0.01,0.02}.png
    <root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png

  The three attenuation coefficients are severities 1-3 (``foggy-1`` … ``foggy-3``).

ACDC (Sakaridis et al. 2021), ``root`` = the folder holding ``rgb_anon/`` and ``gt/``::

    <root>/rgb_anon/{fog,night,rain,snow}/<split>/<seq>/<name>_rgb_anon.png
    <root>/gt/{fog,night,rain,snow}/<split>/<seq>/<name>_gt_labelTrainIds.png

Dark Zurich (Sakaridis et al. 2019) val/test, ``root`` = ``Dark_Zurich_val_anon``::

    <root>/rgb_anon/<split>/night/<seq>/<name>_rgb_anon.png
    <root>/gt/<split>/night/<seq>/<name>_gt_labelTrainIds.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from hardseg.data.base import IMAGE_EXTENSIONS, PairedFileSource, list_split_dirs
from hardseg.data.cityscapes import (
    CITYSCAPES_INFO,
    ID_TO_TRAIN_ID,
    LABEL_SUFFIX,
    TRAIN_ID_LUT,
    TRAIN_ID_TEXT,
    UNKNOWN_ID_TEXT,
)
from hardseg.errors import DataError, one_line

# ---------------------------------------------------------------- GTA5

GTA5_LAYOUT = "expected <root>/images/<n>.png and <root>/labels/<n>.png (Cityscapes label ids), optional <root>/split.mat"
GTA5_VAL_EVERY = 10


def gta5_split_ids(root: Path) -> dict[str, set[int]] | None:
    """The official split (``split.mat``: trainIds, valIds, testIds; image numbers), or None when absent."""
    path = root / "split.mat"
    if not path.is_file():
        return None
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on a broken file
        raise DataError(f"cannot read GTA5 split file {path}: {one_line(exc, typed=False)}") from None
    out = {}
    for split, key in (("train", "trainIds"), ("val", "valIds"), ("test", "testIds")):
        if key in mat:
            out[split] = {int(v) for v in np.asarray(mat[key]).ravel()}
    if not out:
        raise DataError(f"GTA5 split file {path} holds none of trainIds, valIds, testIds")
    return out


def gta5_splits(root: Path) -> list[str]:
    if not (root / "images").is_dir():
        raise DataError(f"GTA5 root not found or incomplete: {root / 'images'} is missing ({GTA5_LAYOUT})")
    ids = gta5_split_ids(root)
    return ["train", "val"] if ids is None else sorted(ids)


class GTA5Source(PairedFileSource):
    """One split of GTA5 (module docstring)."""

    info = CITYSCAPES_INFO
    lut = ID_TO_TRAIN_ID
    unknown_text = UNKNOWN_ID_TEXT

    def __init__(self, root: Path | str, split: str, strict: bool = True) -> None:
        self.root, self.split = Path(root), split
        avail = gta5_splits(self.root)
        if split not in avail:
            raise DataError(f"GTA5 split '{split}' not found in {self.root} (available: {', '.join(avail)})")
        images = sorted(p for p in (self.root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise DataError(f"no images in {self.root / 'images'} ({GTA5_LAYOUT})")
        ids = gta5_split_ids(self.root)
        if ids is None:
            val = set(images[GTA5_VAL_EVERY - 1::GTA5_VAL_EVERY]) or {images[-1]}
            self.images = [p for p in images if (p in val) == (split == "val")]
        else:
            want = ids[split]
            self.images = [p for p in images if p.stem.isdigit() and int(p.stem) in want]
        if not self.images:
            raise DataError(f"GTA5 split '{split}' of {self.root} holds no image")
        self.masks = [self.root / "labels" / f"{p.stem}.png" for p in self.images]
        if strict:
            self.require_masks()


# ---------------------------------------------------------------- Foggy Cityscapes

FOGGY_BETAS = ("0.005", "0.01", "0.02")
FOGGY_LAYOUT = ("expected <root>/leftImg8bit_foggy/<split>/<city>/*_leftImg8bit_foggy_beta_<beta>.png and "
                "<root>/gtFine/<split>/<city>/*_gtFine_labelIds.png")


def foggy_splits(root: Path) -> list[str]:
    if not (root / "leftImg8bit_foggy").is_dir():
        raise DataError(f"Foggy Cityscapes not found: {root / 'leftImg8bit_foggy'} is missing ({FOGGY_LAYOUT})")
    return [s for s in list_split_dirs(root / "leftImg8bit_foggy") if (root / "gtFine" / s).is_dir()]


class FoggyCityscapesSource(PairedFileSource):
    """One split of Foggy Cityscapes at one beta (``variant``), or at all three (None)."""

    info = CITYSCAPES_INFO
    lut = ID_TO_TRAIN_ID
    unknown_text = UNKNOWN_ID_TEXT

    def __init__(self, root: Path | str, split: str, beta: str | None = None, strict: bool = True) -> None:
        self.root, self.split = Path(root), split
        avail = foggy_splits(self.root)
        if split not in avail:
            raise DataError(f"Foggy Cityscapes split '{split}' not found in {self.root} "
                            f"(available: {', '.join(avail) or 'none'}; {FOGGY_LAYOUT})")
        self.images, self.masks = [], []
        for b in (beta,) if beta else FOGGY_BETAS:
            suffix = f"_leftImg8bit_foggy_beta_{b}.png"
            for img in sorted((self.root / "leftImg8bit_foggy" / split).glob(f"*/*{suffix}")):
                self.images.append(img)
                self.masks.append(self.root / "gtFine" / split / img.parent.name
                                  / (img.name[: -len(suffix)] + LABEL_SUFFIX))
        if not self.images:
            raise DataError(f"no *_leftImg8bit_foggy_beta_{beta or '<beta>'}.png files in "
                            f"{self.root / 'leftImg8bit_foggy' / split}/<city>/ ({FOGGY_LAYOUT})")
        if strict:
            self.require_masks()


# ---------------------------------------------------------------- ACDC and Dark Zurich

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
ACDC_LAYOUT = ("expected <root>/rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png and "
               "<root>/gt/<condition>/<split>/<seq>/*_gt_labelTrainIds.png")
DZ_LAYOUT = ("expected <root>/rgb_anon/<split>/night/<seq>/*_rgb_anon.png and "
             "<root>/gt/<split>/night/<seq>/*_gt_labelTrainIds.png")
RGB_SUFFIX = "_rgb_anon.png"
GT_SUFFIX = "_gt_labelTrainIds.png"


class AnonTrainIdSource(PairedFileSource):
    """Images ``*_rgb_anon.png`` under ``rgb_dirs`` with ``*_gt_labelTrainIds.png`` at the same relative
    path under the matching ``gt_dirs`` (ACDC, Dark Zurich)."""

    info = CITYSCAPES_INFO
    lut = TRAIN_ID_LUT
    unknown_text = TRAIN_ID_TEXT

    def __init__(self, pairs_of_dirs: list[tuple[Path, Path]], split: str, layout: str, strict: bool = True) -> None:
        self.split = split
        self.images, self.masks = [], []
        for rgb_dir, gt_dir in pairs_of_dirs:
            for img in sorted(rgb_dir.rglob(f"*{RGB_SUFFIX}")):
                rel = img.relative_to(rgb_dir)
                self.images.append(img)
                self.masks.append(gt_dir / rel.parent / (img.name[: -len(RGB_SUFFIX)] + GT_SUFFIX))
        if not self.images:
            raise DataError(f"no *{RGB_SUFFIX} files under {', '.join(str(r) for r, _ in pairs_of_dirs)} ({layout})")
        if strict:
            self.require_masks()


def acdc_splits(root: Path) -> list[str]:
    if not (root / "rgb_anon").is_dir():
        raise DataError(f"ACDC root not found or incomplete: {root / 'rgb_anon'} is missing ({ACDC_LAYOUT})")
    found = set()
    for cond in ACDC_CONDITIONS:
        found |= {s for s in list_split_dirs(root / "rgb_anon" / cond) if (root / "gt" / cond / s).is_dir()}
    return sorted(found)


def acdc_source(root: Path, split: str, condition: str | None, strict: bool = True) -> AnonTrainIdSource:
    """ACDC's ``split`` of one condition, or of every condition present (None)."""
    conds = (condition,) if condition else ACDC_CONDITIONS
    dirs = [(root / "rgb_anon" / c / split, root / "gt" / c / split) for c in conds
            if (root / "rgb_anon" / c / split).is_dir()]
    if not dirs:
        raise DataError(f"ACDC split '{split}'{f' of condition {condition}' if condition else ''} not found: "
                        f"{root / 'rgb_anon' / (condition or '<condition>') / split} is missing "
                        f"(available splits: {', '.join(acdc_splits(root)) or 'none'}; {ACDC_LAYOUT})")
    return AnonTrainIdSource(dirs, split, ACDC_LAYOUT, strict)


def dark_zurich_splits(root: Path) -> list[str]:
    if not (root / "rgb_anon").is_dir():
        raise DataError(f"Dark Zurich root not found or incomplete: {root / 'rgb_anon'} is missing ({DZ_LAYOUT})")
    return [s for s in list_split_dirs(root / "rgb_anon") if (root / "gt" / s).is_dir()]


def dark_zurich_source(root: Path, split: str, strict: bool = True) -> AnonTrainIdSource:
    avail = dark_zurich_splits(root)
    if split not in avail:
        raise DataError(f"Dark Zurich split '{split}' not found in {root} (available: {', '.join(avail) or 'none'}; "
                        f"{DZ_LAYOUT})")
    return AnonTrainIdSource([(root / "rgb_anon" / split, root / "gt" / split)], split, DZ_LAYOUT, strict)

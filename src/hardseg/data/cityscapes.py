"""Reader for the Cityscapes layout (fine annotations).

Expected layout (as distributed by cityscapes-dataset.com)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Raw label ids (0..33, and 255) are mapped to the 19 evaluation "train ids";
every other label becomes 255 (ignore). A raw id that is not in the labels
table raises :class:`~hardseg.errors.DataError` naming the file and the id.
The seven categories (flat, construction, object, nature, sky, human,
vehicle) form the one coarse level of :attr:`DatasetInfo.hierarchy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from hardseg.data.base import PairedFileSource, apply_lut, identity_lut, list_split_dirs
from hardseg.data.info import DatasetInfo
from hardseg.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 255 = ignored in training and evaluation
    category: str
    color: tuple[int, int, int]


# The labels table of the Cityscapes benchmark (name, raw id, train id,
# category, colour). "license plate" has raw id -1 and never occurs in the
# labelIds PNGs.
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", (0, 0, 0)),
    Label("rectification border", 2, 255, "void", (0, 0, 0)),
    Label("out of roi", 3, 255, "void", (0, 0, 0)),
    Label("static", 4, 255, "void", (0, 0, 0)),
    Label("dynamic", 5, 255, "void", (111, 74, 0)),
    Label("ground", 6, 255, "void", (81, 0, 81)),
    Label("road", 7, 0, "flat", (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", (244, 35, 232)),
    Label("parking", 9, 255, "flat", (250, 170, 160)),
    Label("rail track", 10, 255, "flat", (230, 150, 140)),
    Label("building", 11, 2, "construction", (70, 70, 70)),
    Label("wall", 12, 3, "construction", (102, 102, 156)),
    Label("fence", 13, 4, "construction", (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", (180, 165, 180)),
    Label("bridge", 15, 255, "construction", (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", (150, 120, 90)),
    Label("pole", 17, 5, "object", (153, 153, 153)),
    Label("polegroup", 18, 255, "object", (153, 153, 153)),
    Label("traffic light", 19, 6, "object", (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", (107, 142, 35)),
    Label("terrain", 22, 9, "nature", (152, 251, 152)),
    Label("sky", 23, 10, "sky", (70, 130, 180)),
    Label("person", 24, 11, "human", (220, 20, 60)),
    Label("rider", 25, 12, "human", (255, 0, 0)),
    Label("car", 26, 13, "vehicle", (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", (0, 0, 110)),
    Label("train", 31, 16, "vehicle", (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    Label("license plate", -1, 255, "vehicle", (0, 0, 142)),
)

CATEGORIES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


def _train_labels() -> list[Label]:
    return sorted((lb for lb in LABELS if lb.train_id != 255), key=lambda lb: lb.train_id)


def _build_info() -> DatasetInfo:
    train = _train_labels()
    names = tuple(lb.name for lb in train)
    idx = {n: i for i, n in enumerate(names)}
    return DatasetInfo(
        name="cityscapes",
        class_names=names,
        ignore_index=255,
        large_classes=tuple(idx[n] for n in ("road", "sidewalk", "building", "vegetation", "terrain", "sky")),
        small_classes=(idx["traffic light"], idx["traffic sign"]),
        thin_classes=(idx["pole"],),
        hierarchy=(tuple(CATEGORIES.index(lb.category) for lb in train),),
        hierarchy_names=(CATEGORIES,),
        palette=tuple(lb.color for lb in train),
    )


CITYSCAPES_INFO = _build_info()


def _build_lut() -> np.ndarray:
    """raw id -> train id; -1 marks ids that are not in the labels table."""
    lut = np.full(256, -1, dtype=np.int16)
    for lb in LABELS:
        if lb.id >= 0:
            lut[lb.id] = lb.train_id
    lut[255] = 255
    return lut


ID_TO_TRAIN_ID = _build_lut()
UNKNOWN_ID_TEXT = "is not in the Cityscapes labels table (valid raw ids: 0-33 and 255)"
# Masks already in train ids (ACDC, Dark Zurich ``*_gt_labelTrainIds.png``): 0..18 and 255.
TRAIN_ID_LUT = identity_lut(CITYSCAPES_INFO.num_classes)
TRAIN_ID_TEXT = "is not a Cityscapes train id (0-18, 255 = ignore)"


def map_label_ids(raw: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """Map a raw labelIds array to train ids (uint8); DataError on unknown ids."""
    return apply_lut(raw, ID_TO_TRAIN_ID, path, UNKNOWN_ID_TEXT)


LAYOUT_HELP = "expected <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and <root>/gtFine/<split>/<city>/*_gtFine_labelIds.png"


def available_splits(root: Path) -> list[str]:
    root = Path(root)
    return [s for s in list_split_dirs(root / "leftImg8bit") if (root / "gtFine" / s).is_dir()]


class CityscapesSource(PairedFileSource):
    """One split of a Cityscapes-layout dataset."""

    info = CITYSCAPES_INFO
    lut = ID_TO_TRAIN_ID
    unknown_text = UNKNOWN_ID_TEXT

    def __init__(self, root: Path | str, split: str, strict: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DataError(f"Cityscapes root not found: {self.root} ({LAYOUT_HELP})")
        img_dir = self.root / "leftImg8bit" / split
        lbl_dir = self.root / "gtFine" / split
        if not img_dir.is_dir() or not lbl_dir.is_dir():
            missing = img_dir if not img_dir.is_dir() else lbl_dir
            avail = available_splits(self.root)
            raise DataError(
                f"Cityscapes split '{split}' not found: {missing} is missing "
                f"(available splits: {', '.join(avail) or 'none'}; {LAYOUT_HELP})"
            )
        self.images = sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self.images:
            raise DataError(f"no *{IMAGE_SUFFIX} files in {img_dir}/<city>/ ({LAYOUT_HELP})")
        self.masks = [lbl_dir / img.parent.name / (img.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
                      for img in self.images]
        if strict:
            self.require_masks()


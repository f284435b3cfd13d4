"""ADE20K (SceneParsing, 150 classes) and Pascal VOC 2012 in their layouts as distributed (docs/datasets.md).

ADE20K (Zhou et al. 2017), ``root`` = the ``ADEChallengeData2016`` folder::

    <root>/images/{training,validation}/ADE_train_00000001.jpg
    <root>/annotations/{training,validation}/ADE_train_00000001.png

  Splits ``train`` (= training) and ``val`` (= validation). Annotations use the
  "reduce zero label" convention of the benchmark: raw 0 ("other") is ignored
  (255) and raw ``k`` in 1..150 becomes class ``k - 1``; any other raw value is
  an error naming the file.

Pascal VOC 2012 (Everingham et al. 2010), ``root`` = ``VOCdevkit/VOC2012``::

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png              palette PNG, indices 0-20, 255 = border (ignored)
    <root>/ImageSets/Segmentation/{train,val,trainval}.txt

  Splits are the list files present. Palette indices are the class ids; an
  index 21..254 is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardseg.data.base import PairedFileSource, identity_lut, list_split_dirs, read_split_list
from hardseg.data.info import DatasetInfo, default_palette
from hardseg.errors import DataError

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150


def _ade_info() -> DatasetInfo:
    idx = {n: i for i, n in enumerate(ADE20K_CLASSES)}
    return DatasetInfo(
        name="ade20k",
        class_names=ADE20K_CLASSES,
        large_classes=tuple(idx[n] for n in ("wall", "building", "sky", "floor", "ceiling", "road", "grass",
                                             "sidewalk", "earth", "mountain", "water", "sea", "field")),
        small_classes=tuple(idx[n] for n in ("bottle", "vase", "clock", "sconce", "traffic light", "book")),
        thin_classes=tuple(idx[n] for n in ("pole", "streetlight", "railing", "bannister")),
    )


ADE20K_INFO = _ade_info()
ADE20K_SPLITS = {"train": "training", "val": "validation"}
ADE20K_LAYOUT = ("expected <root>/images/{training,validation}/*.jpg and <root>/annotations/{training,validation}/*.png "
                 "(root = ADEChallengeData2016)")


def reduce_zero_label_lut(num_classes: int) -> np.ndarray:
    """raw 0 → 255 (ignore), raw k (1..num_classes) → k − 1, anything else → -1 (unknown)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = 255
    lut[1:num_classes + 1] = np.arange(num_classes)
    return lut


def ade20k_splits(root: Path) -> list[str]:
    if not (root / "images").is_dir():
        raise DataError(f"ADE20K root not found or incomplete: {root / 'images'} is missing ({ADE20K_LAYOUT})")
    present = set(list_split_dirs(root / "images"))
    return [s for s, folder in ADE20K_SPLITS.items() if folder in present and (root / "annotations" / folder).is_dir()]


class ADE20KSource(PairedFileSource):
    """One split of ADE20K (module docstring)."""

    info = ADE20K_INFO
    lut = reduce_zero_label_lut(150)
    unknown_text = "is not an ADE20K annotation value (0 = other, 1-150 = classes)"

    def __init__(self, root: Path | str, split: str, strict: bool = True) -> None:
        self.root, self.split = Path(root), split
        avail = ade20k_splits(self.root)
        folder = ADE20K_SPLITS.get(split, split)
        if split not in avail:
            raise DataError(f"ADE20K split '{split}' not found: {self.root / 'images' / folder} or "
                            f"{self.root / 'annotations' / folder} is missing (available: {', '.join(avail) or 'none'})")
        self.images = sorted(p for p in (self.root / "images" / folder).iterdir() if p.suffix.lower() == ".jpg")
        if not self.images:
            raise DataError(f"no .jpg images in {self.root / 'images' / folder} ({ADE20K_LAYOUT})")
        self.masks = [self.root / "annotations" / folder / f"{p.stem}.png" for p in self.images]
        if strict:
            self.require_masks()


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_INFO = DatasetInfo(
    name="voc",
    class_names=VOC_CLASSES,
    large_classes=(0,),
    small_classes=(VOC_CLASSES.index("bottle"), VOC_CLASSES.index("pottedplant")),
    palette=default_palette(len(VOC_CLASSES)),  # VOC's own palette (the bit-interleaving scheme)
)
VOC_LAYOUT = ("expected <root>/JPEGImages/<id>.jpg, <root>/SegmentationClass/<id>.png and "
              "<root>/ImageSets/Segmentation/<split>.txt (root = VOCdevkit/VOC2012)")


def voc_splits(root: Path) -> list[str]:
    lists = root / "ImageSets" / "Segmentation"
    if not lists.is_dir():
        raise DataError(f"VOC root not found or incomplete: {lists} is missing ({VOC_LAYOUT})")
    return sorted(p.stem for p in lists.glob("*.txt"))


class VOCSource(PairedFileSource):
    """One split of Pascal VOC 2012 segmentation (module docstring)."""

    info = VOC_INFO
    lut = identity_lut(len(VOC_CLASSES))
    unknown_text = "is not a VOC class index (0-20, 255 = border/ignore)"

    def __init__(self, root: Path | str, split: str, strict: bool = True) -> None:
        self.root, self.split = Path(root), split
        avail = voc_splits(self.root)
        if split not in avail:
            raise DataError(f"VOC split '{split}' not found: {self.root / 'ImageSets' / 'Segmentation' / f'{split}.txt'} "
                            f"is missing (available: {', '.join(avail) or 'none'})")
        ids = read_split_list(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
        self.images = [self.root / "JPEGImages" / f"{i}.jpg" for i in ids]
        self.masks = [self.root / "SegmentationClass" / f"{i}.png" for i in ids]
        if strict:
            self.require_masks()

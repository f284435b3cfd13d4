"""Tiny dataset trees in the exact on-disk layouts and file names of the distributed datasets.

Nothing is downloaded: every image is random noise and every mask a known pattern
of raw label values, so tests can check the id conventions pixel by pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 32, 64


def png(path: Path, arr: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is not None:  # indices as they are, with a colour table (mode P)
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
        img.putpalette(palette)
    else:
        img = Image.fromarray(arr)
    img.save(path)
    return path


def jpg(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def stripes(values: list[int], h: int = H, w: int = W) -> np.ndarray:
    """Vertical stripes, one per value, left to right (the rest of the width repeats the last value)."""
    mask = np.full((h, w), values[-1], dtype=np.uint8)
    step = max(1, w // len(values))
    for i, v in enumerate(values):
        mask[:, i * step:(i + 1) * step] = v
    return mask


# Cityscapes raw label ids covering every train id, ignore classes and 255.
CITY_RAW = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 6, 9, 255]


def cityscapes(root: Path, splits=("train", "val"), n: int = 2) -> Path:
    for s, split in enumerate(splits):
        for i in range(n):
            name = f"city{i}_{s:06d}_{i:06d}"
            png(root / "leftImg8bit" / split / f"city{i}" / f"{name}_leftImg8bit.png", rgb(10 * s + i))
            png(root / "gtFine" / split / f"city{i}" / f"{name}_gtFine_labelIds.png", stripes(CITY_RAW[i:] + CITY_RAW[:i]))
    return root


def foggy(root: Path, split: str = "val", n: int = 2) -> Path:
    """Foggy Cityscapes beside Cityscapes' gtFine (the root holds both)."""
    cityscapes(root, splits=(split,), n=n)
    for img in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        base = np.asarray(Image.open(img))
        for k, beta in enumerate(("0.005", "0.01", "0.02")):
            fogged = (base * (0.8 - 0.2 * k) + 255 * (0.2 + 0.2 * k)).astype(np.uint8)
            png(root / "leftImg8bit_foggy" / split / img.parent.name / f"{stem}_leftImg8bit_foggy_beta_{beta}.png", fogged)
    return root


def gta5(root: Path, n: int = 12, split_mat: bool = False) -> Path:
    for i in range(1, n + 1):
        png(root / "images" / f"{i:05d}.png", rgb(100 + i))
        png(root / "labels" / f"{i:05d}.png", stripes(CITY_RAW[i % 5:] + CITY_RAW[:i % 5]))
    if split_mat:
        from scipy.io import savemat

        ids = np.arange(1, n + 1)
        savemat(root / "split.mat", {"trainIds": ids[: n - 4, None], "valIds": ids[n - 4: n - 2, None],
                                     "testIds": ids[n - 2:, None]})
    return root


TRAIN_IDS = list(range(19)) + [255]


def acdc(root: Path, conditions=("fog", "night"), splits=("train", "val"), n: int = 2) -> Path:
    for c, cond in enumerate(conditions):
        for split in splits:
            for i in range(n):
                seq = f"GOPR{c}{i}"
                name = f"{seq}_frame_{i:06d}"
                png(root / "rgb_anon" / cond / split / seq / f"{name}_rgb_anon.png", rgb(200 + 10 * c + i))
                png(root / "gt" / cond / split / seq / f"{name}_gt_labelTrainIds.png", stripes(TRAIN_IDS[i:] + TRAIN_IDS[:i]))
    return root


def dark_zurich(root: Path, n: int = 2) -> Path:
    for i in range(n):
        seq = "GOPR0356"
        name = f"{seq}_frame_{i:06d}"
        png(root / "rgb_anon" / "val" / "night" / seq / f"{name}_rgb_anon.png", rgb(300 + i))
        png(root / "gt" / "val" / "night" / seq / f"{name}_gt_labelTrainIds.png", stripes(TRAIN_IDS[::-1]))
    return root


# ADE20K raw values: 0 = other (ignored), 1..150 = classes.
ADE_RAW = [0, 1, 2, 3, 75, 149, 150]


def ade20k(root: Path, n: int = 2) -> Path:
    """root = ADEChallengeData2016."""
    for split, tag in (("training", "train"), ("validation", "val")):
        for i in range(1, n + 1):
            name = f"ADE_{tag}_{i:08d}"
            jpg(root / "images" / split / f"{name}.jpg", rgb(400 + i))
            png(root / "annotations" / split / f"{name}.png", stripes(ADE_RAW[i - 1:] + ADE_RAW[:i - 1]))
    return root


VOC_RAW = [0, 1, 5, 15, 20, 255]


def voc_palette() -> list[int]:
    from hardseg.data.info import default_palette

    flat = [v for c in default_palette(256) for v in c]
    return flat


def voc(root: Path, n: int = 3) -> Path:
    """root = VOCdevkit/VOC2012; masks are palette PNGs like the originals."""
    ids = [f"2007_{i:06d}" for i in range(n)]
    for k, i in enumerate(ids):
        jpg(root / "JPEGImages" / f"{i}.jpg", rgb(500 + k))
        png(root / "SegmentationClass" / f"{i}.png", stripes(VOC_RAW[k:] + VOC_RAW[:k]), palette=voc_palette())
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (lists / "val.txt").write_text(ids[-1] + "\n")
    (lists / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root

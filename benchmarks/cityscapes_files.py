"""Cityscapes-format files for loader and GPU benchmarks (no download: the scenes are generated).

Writes ``<root>/leftImg8bit/<split>/bench/bench_000000_NNNNNN_leftImg8bit.png`` and the matching
``gtFine/.../_gtFine_labelIds.png`` (raw label ids), the layout ``data.dataset: cityscapes`` reads.
Each image is a street-like scene (sky, buildings, road, cars, poles) with sensor-like noise, so the
PNG is about as large and as slow to decode as a real Cityscapes frame (≈3 MB at 1024×2048; real ones ≈2 MB).
``unique`` scenes are generated and the others hard-linked to them, which keeps generation cheap; the
loader still opens and decodes every file.

    python benchmarks/cityscapes_files.py ROOT --train 16 --val 2 --size 1024 2048
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

# Raw Cityscapes label ids used by the scenes.
SKY, BUILDING, ROAD, SIDEWALK, CAR, POLE, VEGETATION, PERSON = 23, 11, 7, 8, 26, 17, 21, 24


def scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (h, w, 3), raw labelIds uint8 (h, w)) street scene."""
    label = np.full((h, w), SKY, np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.5))
    label[horizon:] = ROAD
    walk = int(h * 0.08)
    label[horizon:horizon + walk] = SIDEWALK
    x = 0
    while x < w:  # buildings and trees along the horizon
        bw = int(w * rng.uniform(0.05, 0.2))
        top = int(horizon * rng.uniform(0.1, 0.8))
        label[top:horizon, x:x + bw] = BUILDING if rng.random() < 0.7 else VEGETATION
        x += bw
    for _ in range(int(rng.integers(3, 9))):  # cars, people and poles on the road
        cls = rng.choice([CAR, CAR, PERSON, POLE])
        cw = max(2, int(w * (0.004 if cls == POLE else rng.uniform(0.03, 0.12))))
        ch = int(h * (rng.uniform(0.2, 0.4) if cls != CAR else rng.uniform(0.06, 0.15)))
        cx, bottom = int(rng.integers(0, max(1, w - cw))), int(rng.integers(horizon + walk, h))
        label[max(0, bottom - ch):bottom, cx:cx + cw] = cls
    colors = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    image = colors[label].astype(np.int16)
    ramp = np.linspace(-30, 30, h, dtype=np.float32)[:, None, None]
    image += ramp.astype(np.int16)
    image += rng.normal(0, 2.5, (h, w, 3)).astype(np.int16)  # sensor noise: real frames do not compress to nothing
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_cityscapes(root: Path, n_train: int, n_val: int, size: tuple[int, int] = (1024, 2048),
                    unique: int = 4, seed: int = 0) -> Path:
    """Write the two splits under ``root`` (kept if already there with the same counts); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    scenes: list[tuple[Path, Path]] = []
    for split, n in (("train", n_train), ("val", n_val)):
        img_dir = root / "leftImg8bit" / split / "bench"
        lbl_dir = root / "gtFine" / split / "bench"
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"bench_000000_{i:06d}"
            img, lbl = img_dir / f"{stem}_leftImg8bit.png", lbl_dir / f"{stem}_gtFine_labelIds.png"
            if img.is_file() and lbl.is_file():
                continue
            if len(scenes) < unique:
                image, label = scene(*size, rng)
                Image.fromarray(image).save(img)
                Image.fromarray(label).save(lbl)
                scenes.append((img, lbl))
            else:
                src_img, src_lbl = scenes[i % len(scenes)]
                os.link(src_img, img)
                os.link(src_lbl, lbl)
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--train", type=int, default=16)
    p.add_argument("--val", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    p.add_argument("--unique", type=int, default=4)
    a = p.parse_args()
    make_cityscapes(a.root, a.train, a.val, tuple(a.size), a.unique)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

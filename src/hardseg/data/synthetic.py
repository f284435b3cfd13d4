"""Procedural hard-pixel benchmark: generated once, memory-mapped afterwards.

Each image is laid out and rendered at 4x its final side, then the image is
area-downsampled (mean over 4x4 blocks) so pixels on a boundary get mixed
colours, while the mask takes the centre sample of each block. Seven classes:

====  ============  ==========================================================
id    name          shape
====  ============  ==========================================================
0     background    sparse blobs of smooth noise (the rest, ~4-6 % of pixels)
1     region_a      large region: smooth noise above a random threshold,
                    with slightly rough boundaries
2     region_b      large region: the complement of ``region_a``
3     polygon_a     medium star-shaped polygons (radius 8-18 % of the side)
4     polygon_b     same, second class
5     thin          thin curves 1-1.7 px wide at the final size
6     small         small ellipses of radius 1-3 px at the final size
====  ============  ==========================================================

Target pixel shares: ~60 % large regions, ~30 % polygons, ~2 % thin, ~2 %
small, the rest background. Appearance: the bundled CC0 textures of
scikit-image (``brick``, ``grass``, ``gravel``) modulate a per-class colour,
plus smooth illumination, per-image colour jitter and pixel noise.

What makes pixels hard (the knobs below were calibrated against a small
UNet, see ``REGION_*``/``SHADOW_*``):

* ``thin`` shares colour and texture with ``polygon_a`` and ``small`` with
  ``polygon_b``, so they can only be told apart by shape and size (thin
  curves pass *behind* polygon_a and small objects keep clear of polygon_b,
  so none is invisible);
* the two large regions blend into each other over a soft ramp of 2.5-4.5 px
  centred on their (slightly rough) boundary, and a soft shadow runs along
  that boundary, darkening and greying whatever lies there: the boundary
  band is where the errors are.

Calibration (default size, 15 epochs, AdamW lr 3e-3, batch 16, scale/crop/flip
augmentation, CPU): a 0.29 M-parameter UNet (widths 16-128) reached val mIoU
0.795 with boundary-band IoU 0.632, small IoU 0.645, thin IoU 0.618, fog-3
mIoU 0.366 and target mIoU 0.252; ``tiny_seg`` (width 16) reached 0.762 /
0.619 / 0.602 / 0.545, fog-3 0.312.

Splits: ``train``, ``val``, the shifted copies of ``val`` (``fog-1`` ...
``blur-5``, see :mod:`hardseg.data.shifts`) and ``target`` (the same layouts
rendered with a swapped palette and swapped textures). The shifted sets and
``target`` hold the first ``min(n_shift, n_val)`` val layouts, so their masks
are exactly the val masks (they are stored once, in ``val_masks.npy``).

On disk (``root/synthetic-s64-n1200-200-200-seed0/``)::

    meta.json              written last; its presence marks a complete set
    train_images.npy       uint8 (N, H, W, 3)
    train_masks.npy        uint8 (N, H, W)
    val_images.npy, val_masks.npy
    fog-1_images.npy ... target_images.npy

Everything is deterministic in the seed: the same :class:`SyntheticConfig`
gives byte-identical files. Each image draws from its own generator
``default_rng([seed, split_code, index])``.
"""

from __future__ import annotations

import colorsys
import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy import ndimage
from skimage import data as skdata

from hardseg.data.config import SyntheticConfig
from hardseg.data.info import DatasetInfo
from hardseg.data.shifts import SEVERITIES, SHIFT_KINDS, apply_shift, shift_params
from hardseg.errors import DataError

FORMAT_VERSION = 2  # bump whenever the generator's output changes
FACTOR = 4  # supersampling factor of the renderer

CLASS_NAMES = ("background", "region_a", "region_b", "polygon_a", "polygon_b", "thin", "small")
BACKGROUND, REGION_A, REGION_B, POLYGON_A, POLYGON_B, THIN, SMALL = range(7)

SYNTHETIC_INFO = DatasetInfo(
    name="synthetic",
    class_names=CLASS_NAMES,
    ignore_index=255,
    large_classes=(REGION_A, REGION_B),
    small_classes=(SMALL,),
    thin_classes=(THIN,),
    hierarchy=(
        (0, 0, 0, 1, 1, 1, 1),  # stuff / things
        (0, 1, 1, 2, 2, 3, 3),  # background / region / polygon / detail
    ),
    hierarchy_names=(
        ("stuff", "things"),
        ("background", "region", "polygon", "detail"),
    ),
    palette=(
        (60, 60, 60),
        (80, 160, 70),
        (190, 160, 100),
        (200, 60, 50),
        (60, 90, 200),
        (250, 220, 40),
        (240, 40, 220),
    ),
)

SHIFT_SPLITS: tuple[str, ...] = tuple(f"{k}-{s}" for k in SHIFT_KINDS for s in SEVERITIES)
SPLITS: tuple[str, ...] = ("train", "val", *SHIFT_SPLITS, "target")

_SPLIT_CODE = {"train": 1, "val": 2}
_STYLE_CODE = {"source": 11, "target": 12}

# --------------------------------------------------------------------------
# Difficulty knobs (calibrated so that a ~0.3 M-parameter UNet reaches
# mIoU ~0.8 in 15 epochs while band/small/thin IoU stay >= 10 points lower).
REGION_FREQ = (0.3, 0.9)  # cycles per image of the large-region field
REGION_ROUGHNESS = (0.04, 0.12)  # amplitude of the fine boundary noise
REGION_TRANSITION = (2.5, 4.5)  # width (final px) of the soft region_a/region_b ramp
SHADOW_DEPTH = (0.6, 0.9)  # darkening along region boundaries (0 = none)
SHADOW_WIDTH = (2.0, 3.5)  # its Gaussian width, final px
SHADOW_OFFSET = 1.5  # its centre is shifted off the boundary by up to this, final px
SHADOW_DESAT = (0.3, 0.6)  # colour saturation lost at the shadow's centre (0 = none)
POLYGON_RADIUS = (0.08, 0.18)  # fraction of the side
THIN_COUNT = (2, 4)  # curves per 64x64 image (upper bound exclusive)
THIN_RADIUS = (2.0, 3.4)  # stroke radius in render px: width 1.0-1.7 final px
SMALL_RADIUS = (1.0, 3.0)  # final px; drawn as lo + (hi - lo) * u**2, so small ones dominate
SMALL_COUNT = (6, 15)  # per 64x64 image (upper bound exclusive)
PIXEL_NOISE = (3.0, 6.0)  # sensor noise sigma (grey levels); it hurts most in the shadows

# --------------------------------------------------------------------------
# Appearance. Classes are rendered by "appearance group": thin looks like
# polygon_a and small looks like polygon_b.
_GROUP_OF_CLASS = np.array([0, 1, 2, 3, 4, 3, 4], dtype=np.intp)
_TEXTURES = ("brick", "grass", "gravel")

# Per group: RGB colour, texture index, texture contrast.
_STYLES: dict[str, dict[str, Any]] = {
    "source": {
        "colour": np.array(
            [[55, 55, 65], [75, 135, 65], [165, 140, 100], [175, 80, 70], [80, 105, 170]], dtype=np.float32
        ),
        "texture": np.array([2, 1, 2, 0, 0]),
        "contrast": np.array([0.30, 0.35, 0.30, 0.30, 0.30], dtype=np.float32),
    },
}


def _hue_rotated(colours: np.ndarray, turn: float, sat: float) -> np.ndarray:
    out = []
    for r, g, b in colours / 255.0:
        h, s_, v = colorsys.rgb_to_hsv(r, g, b)
        out.append(colorsys.hsv_to_rgb((h + turn) % 1.0, min(1.0, s_ * sat), v))
    return np.round(np.array(out) * 255.0).astype(np.float32)


# The target domain: a new palette (hues turned by 50 degrees, less
# saturated) and swapped textures (background and polygons swap gravel and
# brick). Colour and texture cues partly disagree with what was learned on
# the source; shapes and layouts do not.
_STYLES["target"] = {
    "colour": _hue_rotated(_STYLES["source"]["colour"], 0.14, 0.8),
    "texture": np.array([0, 1, 2, 2, 2]),
    "contrast": np.array([0.30, 0.30, 0.35, 0.30, 0.30], dtype=np.float32),
}


@lru_cache(maxsize=1)
def _textures() -> np.ndarray:
    """The three bundled textures, each zero-mean unit-std, float32 (3, 512, 512)."""
    out = []
    for name in _TEXTURES:
        t = getattr(skdata, name)().astype(np.float32)
        if t.ndim == 3:
            t = t.mean(axis=2)
        t = t[:512, :512]
        out.append((t - t.mean()) / (t.std() + 1e-6))
    return np.stack(out)


# --------------------------------------------------------------------------
# Layout


def _smooth_field(rng: np.random.Generator, n: int, comps: int, fmin: float, fmax: float) -> np.ndarray:
    """Sum of random plane waves with frequencies in [fmin, fmax] cycles per image.

    Returns an (n, n) float32 field of roughly unit standard deviation.
    """
    u = ((np.arange(n, dtype=np.float32) + 0.5) / n) * np.float32(2 * np.pi)
    field = np.zeros((n, n), dtype=np.float32)
    f = rng.uniform(fmin, fmax, comps)
    theta = rng.uniform(0, 2 * np.pi, comps)
    phase = rng.uniform(0, 2 * np.pi, comps)
    amp = 1.0 / f
    amp = amp / np.sqrt(0.5 * np.sum(amp**2))
    for k in range(comps):
        fx, fy = f[k] * np.cos(theta[k]), f[k] * np.sin(theta[k])
        ax = np.float32(fx) * u
        ay = np.float32(fy) * u + np.float32(phase[k])
        # cos(ax + ay) = cos(ay) cos(ax) - sin(ay) sin(ax): two outer products.
        field += np.float32(amp[k]) * (np.outer(np.cos(ay), np.cos(ax)) - np.outer(np.sin(ay), np.sin(ax)))
    return field


def _fine_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-std noise correlated over ~1 final pixel, at render resolution."""
    w = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.8, mode="wrap")
    w /= w.std() + 1e-6
    return ndimage.zoom(w, FACTOR, order=1, mode="grid-wrap", grid_mode=True)


def _draw_star_polygon(
    lab: np.ndarray, covered: np.ndarray, rng: np.random.Generator, cy: float, cx: float, r: float, cls: int
) -> int:
    """Paint a random star-shaped polygon centred at (cy, cx).

    Marks it in ``covered`` and returns the number of newly covered pixels.
    """
    n = lab.shape[0]
    nv = int(rng.integers(3, 8))
    a0 = rng.uniform(0, 2 * np.pi)
    ang = a0 + (np.arange(nv) + rng.uniform(-0.3, 0.3, nv)) * (2 * np.pi / nv)
    rad = r * rng.uniform(0.65, 1.0, nv)
    vy, vx = rad * np.sin(ang), rad * np.cos(ang)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, n)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, n)
    if y0 >= y1 or x0 >= x1:
        return 0
    py = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy)[:, None]
    px = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx)[None, :]
    phi = np.mod(np.arctan2(py, px) - ang[0], 2 * np.pi)
    k = np.searchsorted(np.mod(ang - ang[0], 2 * np.pi), phi, side="right") - 1
    k = np.clip(k, 0, nv - 1)
    k2 = (k + 1) % nv
    ey, ex = vy[k2] - vy[k], vx[k2] - vx[k]
    # The centre is inside: a pixel is inside when it is on the same side of
    # its sector's edge as the centre.
    side_p = ex * (py - vy[k]) - ey * (px - vx[k])
    side_c = ex * (-vy[k]) - ey * (-vx[k])
    inside = side_p * side_c >= 0
    lab[y0:y1, x0:x1][inside] = cls
    box = covered[y0:y1, x0:x1]
    new = int(np.count_nonzero(inside & ~box))
    box |= inside
    return new


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2
    return dy[keep], dx[keep]


def _draw_curve(lab: np.ndarray, rng: np.random.Generator, length: float, radius: float, cls: int, under: int) -> None:
    """Paint a smooth random curve of the given length and stroke radius.

    Pixels of class ``under`` (which looks the same) are left as they are, so
    the curve passes behind it instead of becoming invisible on top of it.
    """
    n = lab.shape[0]
    steps = max(int(length), 2)
    t = np.arange(steps) / steps
    th = (
        rng.uniform(0, 2 * np.pi)
        + rng.uniform(-1.5, 1.5) * t
        + rng.uniform(0, 0.6) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
    )
    y = rng.uniform(0, n) + np.cumsum(np.sin(th))
    x = rng.uniform(0, n) + np.cumsum(np.cos(th))
    dy, dx = _disk_offsets(radius)
    yy = (np.rint(y).astype(np.intp)[:, None] + dy[None, :]).ravel()
    xx = (np.rint(x).astype(np.intp)[:, None] + dx[None, :]).ravel()
    ok = (yy >= 0) & (yy < n) & (xx >= 0) & (xx < n)
    yy, xx = yy[ok], xx[ok]
    keep = lab[yy, xx] != under
    lab[yy[keep], xx[keep]] = cls


def _draw_blob(lab: np.ndarray, rng: np.random.Generator, cy: float, cx: float, r: float, cls: int, avoid: int) -> bool:
    """Paint a small ellipse with semi-axes r and r*[0.7, 1] at a random angle.

    Nothing is painted (returns False) when the ellipse, grown by one final
    pixel, would touch class ``avoid``, which looks the same: the object
    would merge with it and could not be seen.
    """
    n = lab.shape[0]
    b = r * rng.uniform(0.7, 1.0)
    rot = rng.uniform(0, np.pi)
    m = FACTOR
    y0, y1 = max(int(cy - r) - m - 1, 0), min(int(cy + r) + m + 2, n)
    x0, x1 = max(int(cx - r) - m - 1, 0), min(int(cx + r) + m + 2, n)
    if y0 >= y1 or x0 >= x1:
        return False
    py = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    px = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    u = px * np.cos(rot) + py * np.sin(rot)
    v = -px * np.sin(rot) + py * np.cos(rot)
    box = lab[y0:y1, x0:x1]
    if (box[(u / (r + m)) ** 2 + (v / (b + m)) ** 2 <= 1.0] == avoid).any():
        return False
    box[(u / r) ** 2 + (v / b) ** 2 <= 1.0] = cls
    return True


def make_layout(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class map at render resolution ``(FACTOR*size)^2`` (uint8), and the
    region_a map before anything was painted over it (bool; for rendering the
    soft region transition)."""
    n = FACTOR * size
    scale = size / 64.0  # counts of absolute-size things grow with the area / side
    # Large regions: thresholded smooth noise (a few boundaries per image) ...
    field = _smooth_field(rng, n, 6, *REGION_FREQ)
    # ... with rough boundaries: fine noise (correlated over ~1 final px) that
    # only matters where the smooth field is near the threshold.
    field += np.float32(rng.uniform(*REGION_ROUGHNESS)) * _fine_noise(rng, size)
    region_a = field > np.float32(rng.uniform(-0.4, 0.4))
    lab = np.where(region_a, REGION_A, REGION_B).astype(np.uint8)
    # Background: sparse blobs of a second field.
    bg = _smooth_field(rng, n, 8, 1.2, 3.5)
    lab[bg > np.float32(rng.uniform(1.35, 1.85))] = BACKGROUND
    # Medium polygons until a random coverage is reached.
    target = rng.uniform(0.24, 0.36) * n * n
    covered = np.zeros((n, n), dtype=bool)
    count = 0
    for _ in range(40):
        if count >= target:
            break
        r = rng.uniform(*POLYGON_RADIUS) * n
        cy, cx = rng.uniform(-0.1 * n, 1.1 * n, 2)
        cls = POLYGON_A if rng.random() < 0.5 else POLYGON_B
        count += _draw_star_polygon(lab, covered, rng, cy, cx, r, cls)
    # Thin curves: stroke radius in render px (width = 2 * radius / FACTOR final px).
    for _ in range(int(rng.integers(*THIN_COUNT) * scale + 0.5) or 1):
        _draw_curve(lab, rng, rng.uniform(0.4, 0.9) * n, rng.uniform(*THIN_RADIUS), THIN, POLYGON_A)
    # Small objects: radius in final px.
    # (placed away from polygon_b, which looks the same; a few tries each)
    for _ in range(int(rng.integers(*SMALL_COUNT) * scale * scale + 0.5) or 1):
        r = (SMALL_RADIUS[0] + (SMALL_RADIUS[1] - SMALL_RADIUS[0]) * rng.random() ** 2) * FACTOR
        for _try in range(5):
            cy, cx = rng.uniform(0, n, 2)
            if _draw_blob(lab, rng, cy, cx, r, SMALL, POLYGON_B):
                break
    return lab, region_a


# --------------------------------------------------------------------------
# Rendering


def _signed_distance(inside: np.ndarray) -> np.ndarray:
    """Signed distance (final px, > 0 inside) to the boundary of a render-res mask.

    Computed at half the render resolution, which is enough for soft ramps.
    """
    half = inside[::2, ::2]
    d_in = ndimage.distance_transform_edt(half)
    d_out = ndimage.distance_transform_edt(~half)
    return (np.where(half, d_in - 0.5, 0.5 - d_out) * (2.0 / FACTOR)).astype(np.float32)


def _texture_crop(rng: np.random.Generator, tex: np.ndarray, n: int) -> np.ndarray:
    stride = int(rng.integers(1, 3))
    oy, ox = rng.integers(0, tex.shape[0], 2)
    rows = (oy + np.arange(n) * stride) % tex.shape[0]
    cols = (ox + np.arange(n) * stride) % tex.shape[1]
    t = tex.T if rng.random() < 0.5 else tex
    return t[np.ix_(rows, cols)]


def render(lab: np.ndarray, rng: np.random.Generator, style: str = "source", region_a: np.ndarray | None = None) -> np.ndarray:
    """Render a render-resolution class map to a final-size uint8 RGB image.

    With ``region_a`` (the region_a map before overlays), pixels of the two
    large regions blend from one appearance into the other over a soft ramp
    of a few pixels centred on their boundary, and a soft, desaturating
    shadow runs along that boundary; all other boundaries are crisp before
    the area downsampling. Smooth factors (illumination, shadow) are applied
    after downsampling, where they are 16x cheaper and practically the same.
    """
    st = _STYLES[style]
    n = lab.shape[0]
    s = n // FACTOR
    tex = _textures()
    groups = _GROUP_OF_CLASS[lab]
    ng = len(st["colour"])
    # Per-image jitter: global gain per channel, per-group colour offsets,
    # per-group texture crop/stride and contrast.
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)
    colour = ((st["colour"] + rng.normal(0.0, 10.0, (ng, 3))) * gain).astype(np.float32)
    contrast = (st["contrast"] * rng.uniform(0.8, 1.25, ng)).astype(np.float32)
    crops = [_texture_crop(rng, tex[st["texture"][g]], n) for g in range(ng)]
    tsel = np.choose(groups, crops)
    img = colour[groups] * (1.0 + contrast[groups] * tsel)[..., None]
    illum = 1.0 + np.float32(rng.uniform(0.05, 0.15)) * _smooth_field(rng, s, 4, 0.5, 1.5)
    shadow = None
    if region_a is not None:
        ga, gb = _GROUP_OF_CLASS[REGION_A], _GROUP_OF_CLASS[REGION_B]
        width = np.float32(rng.uniform(*REGION_TRANSITION))
        sd_half = _signed_distance(region_a)
        sd = np.repeat(np.repeat(sd_half, 2, axis=0), 2, axis=1)
        w = 1.0 / (1.0 + np.exp(-sd / width))
        sel = ((lab == REGION_A) | (lab == REGION_B)) & (np.abs(w - 0.5) < 0.49)
        wa = w[sel][:, None]
        app_a = colour[ga] * (1.0 + contrast[ga] * crops[ga][sel])[:, None]
        app_b = colour[gb] * (1.0 + contrast[gb] * crops[gb][sel])[:, None]
        img[sel] = wa * app_a + (1.0 - wa) * app_b
        # A shadow along the region boundary (slightly off-centre) darkens
        # and greys whatever lies there, objects included.
        depth = np.float32(rng.uniform(*SHADOW_DEPTH))
        sw = np.float32(rng.uniform(*SHADOW_WIDTH))
        off = np.float32(rng.uniform(-SHADOW_OFFSET, SHADOW_OFFSET))
        desat = np.float32(rng.uniform(*SHADOW_DESAT))
        h = FACTOR // 2
        sd_final = sd_half.reshape(s, h, s, h).mean(axis=(1, 3))
        shadow = np.exp(-(((sd_final - off) / sw) ** 2))
        illum *= 1.0 - depth * shadow
    img = img.reshape(s, FACTOR, s, FACTOR, 3).mean(axis=(1, 3))
    if shadow is not None:
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * (1.0 - desat * shadow)[..., None]
    img *= illum[..., None]
    img += rng.normal(0.0, rng.uniform(*PIXEL_NOISE), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def downsample_mask(lab: np.ndarray) -> np.ndarray:
    """Nearest sampling: the centre sample of each FACTOR x FACTOR block."""
    return np.ascontiguousarray(lab[FACTOR // 2 :: FACTOR, FACTOR // 2 :: FACTOR])


def make_item(seed: int, split: str, index: int, size: int, styles: tuple[str, ...] = ("source",)) -> tuple[list[np.ndarray], np.ndarray]:
    """Images (one per style) and the mask of item ``index`` of ``split``."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    lab, region_a = make_layout(rng, size)
    images = [
        render(lab, np.random.default_rng([seed, _SPLIT_CODE[split], index, _STYLE_CODE[s]]), s, region_a)
        for s in styles
    ]
    return images, downsample_mask(lab)


# --------------------------------------------------------------------------
# Files


def dataset_dirname(cfg: SyntheticConfig) -> str:
    return f"synthetic-s{cfg.size}-n{cfg.n_train}-{cfg.n_val}-{cfg.n_shift}-seed{cfg.seed}"


def _params(cfg: SyntheticConfig) -> dict[str, Any]:
    return {"size": cfg.size, "n_train": cfg.n_train, "n_val": cfg.n_val, "n_shift": cfg.n_shift, "seed": cfg.seed}


def read_meta(path: Path) -> dict[str, Any] | None:
    """The parsed meta.json of a complete dataset folder, else None."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        return None
    return meta


def is_complete(path: Path, cfg: SyntheticConfig | None = None) -> bool:
    """True when ``path`` holds a finished dataset (matching ``cfg`` if given)."""
    meta = read_meta(path)
    if meta is None or (cfg is not None and meta.get("params") != _params(cfg)):
        return False
    for entry in meta.get("splits", {}).values():
        if not (Path(path) / entry["images"]).is_file() or not (Path(path) / entry["masks"]).is_file():
            return False
    return True


def _open_out(path: Path, shape: tuple[int, ...]) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def _items_task(tmp: str, cfg_dict: dict[str, Any], split: str, start: int, stop: int, n_target: int) -> np.ndarray:
    """Render items [start, stop) of ``split`` into the pre-allocated files; returns class counts.

    For ``val``, the first ``n_target`` items are also rendered in the target style.
    """
    folder = Path(tmp)
    images = np.load(folder / f"{split}_images.npy", mmap_mode="r+")
    masks = np.load(folder / f"{split}_masks.npy", mmap_mode="r+")
    target = np.load(folder / "target_images.npy", mmap_mode="r+") if n_target else None
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for i in range(start, stop):
        styles = ("source", "target") if i < n_target else ("source",)
        imgs, mask = make_item(cfg_dict["seed"], split, i, cfg_dict["size"], styles)
        images[i] = imgs[0]
        masks[i] = mask
        if len(imgs) > 1 and target is not None:
            target[i] = imgs[1]
        counts += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)]
    for arr in (images, masks, target):
        if arr is not None:
            arr.flush()
    return counts


def _shift_task(tmp: str, cfg_dict: dict[str, Any], name: str, n: int) -> None:
    """Write the shifted copy ``name`` of the first ``n`` val images."""
    folder = Path(tmp)
    val = np.load(folder / "val_images.npy", mmap_mode="r")
    out = np.load(folder / f"{name}_images.npy", mmap_mode="r+")
    kind, sev = _split_shift(name)
    for a in range(0, n, 64):
        b = min(a + 64, n)
        out[a:b] = apply_shift(np.asarray(val[a:b]), kind, sev, seed=cfg_dict["seed"], start=a)
    out.flush()


def _run_tasks(tasks: list[tuple[Any, ...]], workers: int) -> list[Any]:
    """Run ``(fn, *args)`` tasks, in ``workers`` forked processes when > 1.

    Every item draws from its own seeded generator and writes to its own
    slots, so the files do not depend on ``workers``. Children run numpy and
    scipy only, so forking is safe here (and avoids re-importing the caller's
    ``__main__`` as spawn would).
    """
    if workers > 1 and len(tasks) > 1 and "fork" in mp.get_all_start_methods():
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
                futures = [pool.submit(fn, *args) for fn, *args in tasks]
                return [f.result() for f in futures]
        except BrokenProcessPool:  # pragma: no cover - e.g. a child killed for memory
            pass
    return [fn(*args) for fn, *args in tasks]


def _default_workers(cfg: SyntheticConfig) -> int:
    """Two processes for sets worth it (>= ~0.5 Mpx of output), else one."""
    if (cfg.n_train + cfg.n_val) * cfg.size * cfg.size < 500 * 64 * 64:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def generate_synthetic(root: Path, cfg: SyntheticConfig, *, workers: int | None = None) -> Path:
    """Generate the benchmark into ``root/<dataset_dirname(cfg)>`` and return that path.

    Files are written to a temporary folder in ``root`` with ``meta.json``
    last, and the folder is renamed into place, so a reader never sees a
    half-written dataset. An existing folder of the same name is replaced.
    Use :func:`ensure_synthetic` to generate only when missing.

    Args:
        workers: processes to use (default: 2 for large sets, else 1); the
            output is byte-identical for any value.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / dataset_dirname(cfg)
    workers = _default_workers(cfg) if workers is None else max(1, int(workers))
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        n_s = min(cfg.n_shift, cfg.n_val)
        s = cfg.size
        for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
            _open_out(tmp / f"{split}_images.npy", (n, s, s, 3))
            _open_out(tmp / f"{split}_masks.npy", (n, s, s))
        for name in (*SHIFT_SPLITS, "target"):
            _open_out(tmp / f"{name}_images.npy", (n_s, s, s, 3))
        cfg_dict = _params(cfg)
        _textures()  # load once here, so forked workers inherit it
        tasks: list[tuple[Any, ...]] = []
        for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
            # chunks small enough to balance two workers, in a fixed order
            step = max(1, -(-n // (4 * workers)))
            tasks += [(_items_task, str(tmp), cfg_dict, split, a, min(a + step, n), n_s if split == "val" else 0)
                      for a in range(0, n, step)]
        results = _run_tasks(tasks, workers)
        counts = {
            split: sum((r for t, r in zip(tasks, results) if t[3] == split), np.zeros(len(CLASS_NAMES), np.int64))
            for split in ("train", "val")
        }
        _run_tasks([(_shift_task, str(tmp), cfg_dict, name, n_s) for name in SHIFT_SPLITS], workers)
        splits: dict[str, dict[str, Any]] = {
            "train": {"images": "train_images.npy", "masks": "train_masks.npy", "count": cfg.n_train},
            "val": {"images": "val_images.npy", "masks": "val_masks.npy", "count": cfg.n_val},
        }
        for name in (*SHIFT_SPLITS, "target"):
            splits[name] = {"images": f"{name}_images.npy", "masks": "val_masks.npy", "count": n_s, "layouts": "val"}
        total = {k: int(v.sum()) for k, v in counts.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "synthetic",
            "params": _params(cfg),
            "info": SYNTHETIC_INFO.to_dict(),
            "splits": splits,
            "class_pixel_counts": {k: [int(c) for c in v] for k, v in counts.items()},
            "class_shares": {k: [round(float(c) / total[k], 5) for c in v] for k, v in counts.items()},
            "shifts": {name: shift_params(*_split_shift(name)) for name in SHIFT_SPLITS},
            "recipe": _recipe(),
        }
        with open(tmp / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
            os.rename(final, trash / "old")
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _recipe() -> dict[str, Any]:
    """The difficulty knobs, recorded in meta.json."""
    names = ("REGION_FREQ", "REGION_ROUGHNESS", "REGION_TRANSITION", "SHADOW_DEPTH", "SHADOW_WIDTH", "SHADOW_OFFSET",
             "SHADOW_DESAT", "POLYGON_RADIUS", "THIN_COUNT", "THIN_RADIUS", "SMALL_RADIUS", "SMALL_COUNT", "PIXEL_NOISE")
    return {n.lower(): (list(v) if isinstance(v, tuple) else v) for n, v in ((n, globals()[n]) for n in names)}


def _split_shift(name: str) -> tuple[str, int]:
    kind, sev = name.rsplit("-", 1)
    return kind, int(sev)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_synthetic(root: Path, cfg: SyntheticConfig) -> Path:
    """The dataset folder for ``cfg`` under ``root``, generated if missing.

    Safe when several processes call it at once: generation runs under an
    exclusive ``fcntl.flock`` on ``root/.synthetic.lock`` and the folder is
    checked again once the lock is held. A folder without a valid
    ``meta.json`` (an interrupted generation) is regenerated.
    """
    root = Path(root)
    final = root / dataset_dirname(cfg)
    if is_complete(final, cfg):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the synthetic data folder {root}: {exc.strerror}") from None
    with _locked(root / ".synthetic.lock"):
        if is_complete(final, cfg):
            return final
        return generate_synthetic(root, cfg)


def generate_command(root: Path, cfg: SyntheticConfig, *, force: bool = False) -> Path:
    """``hardseg data generate``: make the set (unless present) and print one line."""
    t0 = time.perf_counter()
    root = Path(root)
    final = root / dataset_dirname(cfg)
    existed = is_complete(final, cfg) and not force
    if force:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / ".synthetic.lock"):
            path = generate_synthetic(root, cfg)
    else:
        path = ensure_synthetic(root, cfg)
    n_s = min(cfg.n_shift, cfg.n_val)
    what = "exists" if existed else "generated"
    print(
        f"synthetic dataset {what}: {path} (train {cfg.n_train}, val {cfg.n_val}, "
        f"{len(SHIFT_SPLITS) + 1} shifted/target sets x {n_s}; {cfg.size}x{cfg.size} px) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return path


# --------------------------------------------------------------------------
# Reading


class SyntheticSource:
    """One split of a generated synthetic set, memory-mapped on first access."""

    info = SYNTHETIC_INFO

    def __init__(self, path: Path | str, split: str) -> None:
        self.path = Path(path)
        self.split = split
        meta = read_meta(self.path)
        if meta is None:
            raise DataError(f"not a complete synthetic dataset (no valid meta.json): {self.path}")
        if split not in meta["splits"]:
            raise DataError(f"unknown split '{split}' for dataset 'synthetic'; available: {', '.join(meta['splits'])}")
        self.meta = meta
        entry = meta["splits"][split]
        self.count = int(entry["count"])
        self.image_file = self.path / entry["images"]
        self.mask_file = self.path / entry["masks"]
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None or self._masks is None:
            try:
                self._images = np.load(self.image_file, mmap_mode="r")
                self._masks = np.load(self.mask_file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read synthetic data file in {self.path}: {exc}") from None
        return self._images, self._masks

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each DataLoader worker, not pickled.
        state = dict(self.__dict__)
        state["_images"] = state["_masks"] = None
        return state

    def __len__(self) -> int:
        return self.count

    def load_mask(self, index: int) -> np.ndarray:
        return np.array(self._open()[1][index])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self._open()
        return np.array(images[index]), np.array(masks[index])

    def validate(self) -> None:
        images, masks = self._open()
        s = self.meta["params"]["size"]
        if images.shape != (self.count, s, s, 3) or masks.shape[0] < self.count or masks.shape[1:] != (s, s):
            raise DataError(f"{self.image_file}: shape {images.shape} does not match meta.json")
        bad = np.asarray(masks[: self.count]).max(initial=0)
        if bad >= self.info.num_classes:
            raise DataError(f"{self.mask_file}: label id {int(bad)} outside 0..{self.info.num_classes - 1}")

    def class_pixel_counts(self) -> np.ndarray:
        counts = self.meta.get("class_pixel_counts", {}).get(self.split)
        if counts is not None:
            return np.asarray(counts, dtype=np.int64)
        masks = self._open()[1][: self.count]
        return np.bincount(np.asarray(masks).ravel(), minlength=256)[: self.info.num_classes].astype(np.int64)

"""ImageNet-C corruptions for segmentation evaluation, in numpy/scipy/scikit-image.

The formulas and per-severity constants are those of Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), as packaged for arbitrary image sizes by the
``imagecorruptions`` package (Michaelis et al. 2019, file
``imagecorruptions/corruptions.py``) and used for segmentation on Cityscapes,
VOC and ADE20K by Kamann & Rother, "Benchmarking the Robustness of Semantic
Segmentation Models" (CVPR 2020). That package does not import with the
pinned stack (it needs ``pkg_resources``, gone from setuptools >= 81, and
OpenCV), so the formulas are re-implemented here; docs/datasets.md lists the
differences:

* OpenCV calls are replaced by their definitions (``cv2.filter2D`` with
  reflect-101 borders = ``scipy.ndimage.correlate(mode="mirror")``; RGB→grey
  with 0.299/0.587/0.114);
* ``spatter``'s OpenCV steps are written out: Canny (3x3 Sobel, L1 magnitude,
  OpenCV's non-maximum suppression and hysteresis), the 5x5 chamfer distance
  transform of ``cv2.distanceTransform(DIST_L2, 5)``, box filters,
  ``equalizeHist`` (:func:`spatter`);
* ``frost`` blends a crop of one of the six frost photographs that ship inside
  the package; they are not ours to ship, so they are read from a local folder
  (``HARDSEG_FROST_DIR``, default ``~/.cache/hardseg/frost``; :func:`frost_dir`),
  and resized with OpenCV's bicubic kernel written out (:func:`_resize_cubic`);
* randomness comes from a ``numpy.random.Generator`` seeded by (image,
  corruption, severity) (:func:`corruption_seed`), so an image is corrupted
  identically in every run and on every DDP rank; any object with numpy's
  ``normal``/``poisson``/``uniform``/``random`` methods (e.g. a
  ``RandomState``) can be passed instead, which is how the tests compare with
  the package's outputs.

Each function maps a uint8 RGB image ``(H, W, 3)`` to a float image in
[0, 255]; :func:`corrupt` converts the result to uint8 by truncation, as the
package does. Families as in ImageNet-C: noise, blur, weather, digital.
"""

from __future__ import annotations

import functools
import io
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.io import imread

from hardseg.robustness import CORRUPTION_FAMILIES

SEVERITIES = (1, 2, 3, 4, 5)
Rng = Any  # numpy Generator or RandomState


def _f(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) / 255.0


def _gaussian(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """``skimage.filters.gaussian`` on the spatial axes (channels untouched)."""
    sig = tuple(np.broadcast_to(np.asarray(sigma, dtype=float), (2,))) + (0.0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _rgb2gray(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _randint(rng: Rng, high: int) -> int:
    """An integer in [0, high), drawn as ``np.random.randint(high)`` (RandomState) or ``Generator.integers``."""
    return int(rng.integers(high) if hasattr(rng, "integers") else rng.randint(high))


# ---------------------------------------------------------------- noise

def gaussian_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _f(x)
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (60, 25, 12, 5, 3)[severity - 1]
    x = _f(x)
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    """Salt-and-pepper noise on a fraction ``c`` of the values, half salt, half pepper
    (``skimage.util.random_noise(mode="s&p")``)."""
    c = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = _f(x).copy()
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    x[hit & salt] = 1.0
    x[hit & ~salt] = 0.0
    return np.clip(x, 0, 1) * 255


def speckle_noise(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (0.15, 0.2, 0.35, 0.45, 0.6)[severity - 1]
    x = _f(x)
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


# ---------------------------------------------------------------- blur

def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """An anti-aliased disk kernel: the aliased disk, normalised, then a small Gaussian blur
    (3x3, or 5x5 above radius 8; reflect-101 borders as in ``cv2.GaussianBlur``)."""
    if radius <= 8:
        L, k = np.arange(-8, 9), 3
    else:
        L, k = np.arange(-radius, radius + 1), 5
    X, Y = np.meshgrid(L, L)
    d = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    d /= d.sum()
    t = np.arange(k) - (k - 1) / 2
    g = np.exp(-(t ** 2) / (2 * alias_blur ** 2))
    g /= g.sum()
    d = ndimage.correlate1d(d, g.astype(np.float32), axis=0, mode="mirror")
    return ndimage.correlate1d(d, g.astype(np.float32), axis=1, mode="mirror")


def defocus_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    x = _f(x)
    k = _disk(c[0], c[1]).astype(np.float64)
    out = np.stack([ndimage.correlate(x[..., i], k, mode="mirror") for i in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def gaussian_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (1, 2, 3, 4, 6)[severity - 1]
    return np.clip(_gaussian(_f(x), c), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    """Blur, locally shuffle pixels (each pixel, bottom-right to top-left, takes a random neighbour's
    value within ``max_delta``), blur again.

    The reference swaps pixels one by one in that order; :func:`_glass_swaps` computes the same result
    for all pixels at once (same random draws, identical output)."""
    sigma, delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    x = np.uint8(_gaussian(_f(x), sigma) * 255)
    h, w = x.shape[:2]
    for _ in range(iterations):
        offsets = rng.uniform(-delta, delta, size=(max(0, h - 2 * delta), max(0, w - 2 * delta), 2))
        x = _glass_swaps(x, np.floor(offsets).astype(np.int64), delta)  # uniform integers in [-delta, delta)
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def _glass_swaps(x: np.ndarray, offsets: np.ndarray, delta: int) -> np.ndarray:
    """One pass of the reference's pixel "swaps", vectorised, with exactly its result.

    The reference visits rows ``h - delta`` down to ``delta + 1`` and, in each, columns ``w - delta`` down
    to ``delta + 1``, and sets ``x[r, c] = x[r + dy, c + dx]`` (``offsets[a, b] = (dx, dy)`` for the a-th
    row and b-th column visited). Its "swap" assigns numpy views, so it copies the neighbour's pixel and
    leaves the neighbour as it was; the benchmark is defined by that behaviour. The order matters only
    where the source pixel was visited earlier in the pass (a lower row, or the same row to the right,
    inside the visited region): then the pixel takes the source's *new* value, otherwise the value from
    before the pass. So every visited pixel points at its source when the source was visited earlier,
    the pointers are followed to their ends by pointer doubling (chains run strictly backwards in the
    visiting order, so they end), and each pixel takes the old value of its chain end's source.
    """
    h, w = x.shape[:2]
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    if not len(rows) or not len(cols):
        return x
    dx, dy = offsets[..., 0], offsets[..., 1]
    r, c = rows[:, None], cols[None, :]
    sr, sc = r + dy, c + dx
    visited_src = (sr > delta) & (sr <= h - delta) & (sc > delta) & (sc <= w - delta)
    earlier = visited_src & ((dy > 0) | ((dy == 0) & (dx > 0)))
    here = (r * w + c).ravel()
    src = (sr * w + sc).ravel()
    source = np.arange(h * w)  # a pixel's source in the pass (itself when not visited)
    source[here] = src
    nxt = np.arange(h * w)  # a visited pixel whose source was visited earlier: follow it
    nxt[here] = np.where(earlier.ravel(), src, here)
    while True:
        jumped = nxt[nxt]
        if np.array_equal(jumped, nxt):
            break
        nxt = jumped
    flat = x.reshape(h * w, -1)
    out = flat.copy()
    out[here] = flat[source[nxt[here]]]
    return out.reshape(x.shape)


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) pixels, repeating the edge row/column into the uncovered part."""
    out = image
    if dx:
        out = np.roll(out, dx, axis=1)
        if dx > 0:
            out[:, :dx] = out[:, dx:dx + 1]
        else:
            out[:, dx:] = out[:, dx - 1:dx]
    if dy:
        out = np.roll(out, dy, axis=0)
        if dy > 0:
            out[:dy] = out[dy:dy + 1]
        else:
            out[dy:] = out[dy - 1:dy]
    return out


def _motion(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """Sum of shifted copies along ``angle`` weighted by a one-sided Gaussian of ``sigma``."""
    width = 2 * radius + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    py, px = width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle))
    hyp = math.hypot(py, px)
    out = np.zeros(x.shape, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(i * py / hyp - 0.5)
        dx = -math.ceil(i * px / hyp - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break
        out = out + k[i] * _shift(x, dx, dy)
    return out


def motion_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    angle = rng.uniform(-45, 45)
    return np.clip(_motion(np.asarray(x), radius, sigma, angle), 0, 255)


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre crop of ``1/factor`` of the image back to (at least) full size, bilinearly."""
    h0, w0 = int(np.ceil(img.shape[0] / factor)), int(np.ceil(img.shape[1] / factor))
    top, left = (img.shape[0] - h0) // 2, (img.shape[1] - w0) // 2
    return ndimage.zoom(img[top:top + h0, left:left + w0], (factor, factor, 1), order=1)


def _linear_zoom_axis(a: np.ndarray, factor: float, keep: int, axis: int) -> np.ndarray:
    """The first ``keep`` samples along ``axis`` of ``ndimage.zoom(a, factor, order=1)`` on that axis:
    ``round(n * factor)`` samples at ``i * (n - 1) / (n_out - 1)``, linearly interpolated (float64)."""
    n = a.shape[axis]
    n_out = int(round(n * factor))
    pos = np.arange(min(keep, n_out)) * ((n - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    frac = frac.reshape(shape)
    lo_v, out = np.take(a, lo, axis=axis), np.take(a, hi, axis=axis)
    out -= lo_v  # lo + (hi - lo) * frac, in place
    out *= frac
    out += lo_v
    return out


def _clipped_zoom_top_left(img: np.ndarray, factor: float) -> np.ndarray:
    """``_clipped_zoom(img, factor)[:h, :w]`` (the part zoom blur adds up) without computing the rest: bilinear
    interpolation is separable, so rows then columns, in float64; equal to ``ndimage.zoom`` up to float64
    rounding (then float32 as the reference). ``img``: float64 (``ndimage.zoom`` computes in float64)."""
    h, w = img.shape[:2]
    h0, w0 = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - h0) // 2, (w - w0) // 2
    crop = img[top:top + h0, left:left + w0]  # float64 (zoom_blur converts once)
    return _linear_zoom_axis(_linear_zoom_axis(crop, factor, h, 0), factor, w, 1).astype(np.float32)


def zoom_blur(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    factors = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
               np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[severity - 1]
    x = _f(x).astype(np.float32)
    x64 = x.astype(np.float64)  # exact; what ndimage.zoom would convert each layer's input to
    out = np.zeros_like(x)
    for z in factors:
        layer = _clipped_zoom_top_left(x64, z)
        out[: layer.shape[0], : layer.shape[1]] += layer
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


# ---------------------------------------------------------------- weather

def plasma_fractal(size: int, decay: float, rng: Rng) -> np.ndarray:
    """Diamond-square height map in [0, 1] of side ``size`` (a power of two)."""
    m = np.empty((size, size), dtype=np.float64)
    m[0, 0] = 0
    step, wibble = size, 100.0

    def mean_plus_noise(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, axis=0)
        sq = sq + np.roll(sq, -1, axis=1)
        m[half:size:step, half:size:step] = mean_plus_noise(sq)
        centres = m[half:size:step, half:size:step]
        corners = m[0:size:step, 0:size:step]
        lt = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        m[0:size:step, half:size:step] = mean_plus_noise(lt)
        tt = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        m[half:size:step, 0:size:step] = mean_plus_noise(tt)
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def fog(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    h, w = x.shape[:2]
    size = 1 << (max(h, w, 3) - 1).bit_length()
    x = _f(x)
    top = x.max()
    x = x + c[0] * plasma_fractal(size, c[1], rng)[:h, :w][..., None]
    return np.clip(x * top / (top + c[0]), 0, 1) * 255


def snow(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))[severity - 1]
    x = np.asarray(x, dtype=np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(layer.squeeze(), 0, 1)
    layer = _motion(layer, c[4], c[5], rng.uniform(-135, -45))
    layer = (np.round(layer * 255).astype(np.uint8) / 255.0)[..., None][: x.shape[0], : x.shape[1]]
    grey = _rgb2gray(x)[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


FROST_ENV = "HARDSEG_FROST_DIR"
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


def frost_dir() -> Path:
    """The folder holding :data:`FROST_FILES`: ``$HARDSEG_FROST_DIR``, else ``$XDG_CACHE_HOME/hardseg/frost``
    (``~/.cache/hardseg/frost``); docs/datasets.md, "Corruptions"."""
    if os.environ.get(FROST_ENV):
        return Path(os.environ[FROST_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hardseg" / "frost"


def check_frost_files() -> Path:
    """The frost folder, or ValueError naming the missing photographs and the folder to put them in."""
    folder = frost_dir()
    missing = [name for name in FROST_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"corruption 'frost' needs {', '.join(missing)} in {folder}: copy them from the "
                         f"imagecorruptions package's imagecorruptions/frost/ folder there, or set {FROST_ENV} "
                         f"to a folder holding them")
    return folder


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """OpenCV's bicubic weights (Keys, a = -0.75) of the 4 taps around a fraction ``t``: shape ``(len(t), 4)``."""
    t = t[:, None] + np.array([1.0, 0.0, -1.0, -2.0])
    d = np.abs(t)
    return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                    np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))


def _resize_cubic(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)`` of a uint8 image: pixel-centre
    alignment, edge pixels repeated, rows then columns, rounded to uint8 (OpenCV's fixed-point arithmetic
    may differ by one level)."""
    out = img.astype(np.float64)
    for axis, n in ((0, height), (1, width)):
        size = out.shape[axis]
        pos = (np.arange(n) + 0.5) * (size / n) - 0.5
        left = np.floor(pos)
        w = _cubic_weights(pos - left)
        idx = np.clip(left[:, None].astype(np.int64) + np.arange(-1, 3), 0, size - 1)
        taken = np.take(out, idx, axis=axis)  # (..., n, 4, ...) on ``axis``
        shape = [1] * taken.ndim
        shape[axis], shape[axis + 1] = n, 4
        out = (taken * w.reshape(shape)).sum(axis=axis + 1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=6)
def _frost_photo(path: str, h: int, w: int) -> np.ndarray:
    """The photograph at ``path`` (RGB) resized to 1.1x the size that covers an ``h`` x ``w`` image;
    cached, as every image of a dataset usually has the same size."""
    photo = np.asarray(imread(path))[..., :3]
    fh, fw = photo.shape[:2]
    scale = 1.1 * max(1.0, h / fh, w / fw)
    photo = _resize_cubic(photo, int(np.ceil(fw * scale)), int(np.ceil(fh * scale)))
    photo.flags.writeable = False
    return photo


def frost(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    """``c0 * x + c1 * frost``: a random crop of a frost photograph scaled to 1.1x the size that covers the image.

    As in the reference, the photograph is drawn from the first five of :data:`FROST_FILES` (its
    ``np.random.randint(5)``), then the crop's top and left offsets."""
    c = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    name = FROST_FILES[_randint(rng, 5)]
    h, w = x.shape[:2]
    photo = _frost_photo(str(check_frost_files() / name), h, w)
    top, left = _randint(rng, photo.shape[0] - h), _randint(rng, photo.shape[1] - w)
    crop = photo[top:top + h, left:left + w].astype(np.float64)
    return np.clip(c[0] * np.asarray(x, dtype=np.float64) + c[1] * crop, 0, 255)


def _rgb2hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h, s, v) of a float RGB image: ``skimage.color.rgb2hsv``'s arithmetic, operation for operation (so
    bit for bit the same), without its boolean-mask gathers and scatters."""
    r, g, b = (np.ascontiguousarray(x[..., i]) for i in range(3))  # contiguous planes: faster arithmetic
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    grey = delta == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(grey, 0.0, delta / v)
        h = np.where(b == v, 4.0 + (r - g) / delta,  # ties: blue over green over red, as skimage assigns
                     np.where(g == v, 2.0 + (b - r) / delta, (g - b) / delta))
    h = h / 6.0  # in [-1/6, 5/6]: numpy's "% 1.0" adds 1 to the negative ones, exactly
    h = np.where(grey, 0.0, np.where(h < 0, h + 1.0, h))
    return h, s, v


def _hsv2rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``skimage.color.hsv2rgb`` of the channels, operation for operation, picking each output channel from
    the sector ``floor(6 h) % 6`` with ``np.choose`` per channel instead of over stacked copies."""
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = hi.astype(np.uint8) % 6
    return np.stack([np.choose(hi, (v, q, p, p, t, v)), np.choose(hi, (t, v, v, q, p, p)),
                     np.choose(hi, (p, p, t, v, v, q))], axis=-1)


def brightness(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    h, s, v = _rgb2hsv(_f(x))
    return np.clip(_hsv2rgb(h, s, np.clip(v + c, 0, 1)), 0, 1) * 255


# ---------------------------------------------------------------- digital

def contrast(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _f(x)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def saturate(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
    h, s, v = _rgb2hsv(_f(x))
    return np.clip(_hsv2rgb(h, np.clip(s * c[0] + c[1], 0, 1), v), 0, 1) * 255


def jpeg_compression(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buf = io.BytesIO()
    Image.fromarray(np.asarray(x, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def pixelate(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[:2]
    im = Image.fromarray(np.asarray(x, dtype=np.uint8))
    im = im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.NEAREST)
    return np.asarray(im, dtype=np.float64)


def elastic_transform(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    """Displace pixels by a smoothed random field (Simard et al. 2003), bilinear sampling, reflected borders."""
    image = np.asarray(x, dtype=np.float32) / 255.0
    h, w = image.shape[:2]
    sigma = np.array((h, w)) * 0.01
    alpha = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)[severity - 1]
    m = h * 0.005
    dx = (_gaussian(rng.uniform(-m, m, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(rng.uniform(-m, m, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(image)
    for ch in range(image.shape[2]):
        out[..., ch] = ndimage.map_coordinates(image[..., ch], (yy + dy, xx + dx), order=1, mode="reflect")
    return np.clip(out, 0, 1) * 255


def _canny(img: np.ndarray, low: int, high: int) -> np.ndarray:
    """``cv2.Canny(img, low, high)`` of a uint8 image as a boolean edge map: 3x3 Sobel gradients (edge
    pixels repeated), L1 magnitude, non-maximum suppression along the gradient direction quantised at
    22.5 and 67.5 degrees (OpenCV's ``tan(22.5)`` in 15-bit fixed point and its tie rules), then
    hysteresis: pixels above ``low`` connected (8-neighbours) to a pixel above ``high``."""
    g = img.astype(np.int64)
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    dx = ndimage.correlate(g, sobel, mode="nearest")
    dy = ndimage.correlate(g, sobel.T, mode="nearest")
    mag = np.abs(dx) + np.abs(dy)
    p = np.pad(mag, 1)  # zero magnitude outside the image
    h, w = mag.shape

    def at(di: int, dj) -> np.ndarray:  # magnitude of the neighbour at row offset di, column offset dj
        cols = np.arange(w)[None, :] + 1 + dj
        return p[np.arange(h)[:, None] + 1 + di, cols]

    ax, ay = np.abs(dx), np.abs(dy) << 15
    tg22 = ax * 13573  # int(tan(22.5 deg) * 2**15 + 0.5)
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg22 + (ax << 16))
    s = np.where((dx ^ dy) < 0, -1, 1)
    keep = np.where(horizontal, (mag > at(0, -1)) & (mag >= at(0, 1)),
                    np.where(vertical, (mag > at(-1, 0)) & (mag >= at(1, 0)),
                             (mag > at(-1, -s)) & (mag > at(1, s))))
    candidate = keep & (mag > low)
    labels, _ = ndimage.label(candidate, structure=np.ones((3, 3)))
    strong = np.unique(labels[candidate & (mag > high)])
    return np.isin(labels, strong[strong > 0])


def _chamfer_distance(zero: np.ndarray) -> np.ndarray:
    """``cv2.distanceTransform(src, cv2.DIST_L2, 5)`` with ``zero`` = (src == 0): the two-pass 5x5 chamfer
    distance (steps 1, 1.4 and 2.1969 as float32, Borgefors 1986) to the nearest zero pixel. Each pass runs
    row by row; the dependency on the previous pixel of the row is a running minimum (summed in float64,
    rounded to float32 per row, where OpenCV rounds every addition: at most one float32 ulp apart)."""
    hv, diag, knight = np.float32(1), np.float32(1.4), np.float32(2.1969)
    big = np.float32(1e30)
    h, w = zero.shape
    t = np.full((h + 4, w + 4), big, dtype=np.float32)
    ramp = np.arange(w, dtype=np.float64)
    upper = ((-2, -1, knight), (-2, 1, knight), (-1, -2, knight), (-1, -1, diag), (-1, 0, hv), (-1, 1, diag),
             (-1, 2, knight))
    for i in range(h):  # forward: neighbours above, then the row's left neighbour
        r = i + 2
        base = np.min([t[r + di, 2 + dj:2 + dj + w] + wt for di, dj, wt in upper], axis=0).astype(np.float64)
        base = np.where(zero[i], 0.0, base)
        t[r, 2:2 + w] = np.minimum.accumulate(base - ramp) + ramp  # min over k <= j of base[k] + (j - k)
    for i in range(h - 1, -1, -1):  # backward: neighbours below, then the row's right neighbour
        r = i + 2
        below = np.min([t[r - di, 2 - dj:2 - dj + w] + wt for di, dj, wt in upper], axis=0)
        base = np.minimum(t[r, 2:2 + w], below).astype(np.float64)[::-1]
        t[r, 2:2 + w] = (np.minimum.accumulate(base - ramp) + ramp)[::-1]
    return t[2:2 + h, 2:2 + w].copy()


def _box3(x: np.ndarray) -> np.ndarray:
    """``cv2.blur(x, (3, 3))``: the 3x3 mean with reflect-101 borders, summed in float64."""
    return ndimage.correlate(x.astype(np.float64), np.ones((3, 3)), mode="mirror") * (1.0 / 9)


def _equalize_hist(x: np.ndarray) -> np.ndarray:
    """``cv2.equalizeHist`` of a uint8 image: the cumulative histogram above the lowest level, scaled to 0-255."""
    hist = np.bincount(x.ravel(), minlength=256)
    lowest = int(np.flatnonzero(hist)[0])
    if hist[lowest] == x.size:
        return x.copy()
    scale = np.float32(255.0 / (x.size - hist[lowest]))
    cum = np.cumsum(hist) - hist[lowest]
    lut = np.clip(np.rint(cum.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    lut[:lowest + 1] = 0
    return lut[x]


def spatter(x: np.ndarray, severity: int, rng: Rng) -> np.ndarray:
    """Liquid (severities 1-3: pale turquoise drops whose rims come from the edges of a thresholded, blurred
    noise layer) or mud (4-5: dark brown blobs of that layer), after the reference's OpenCV steps.

    If no drop forms (a small image whose blurred noise stays below the threshold), the liquid variant
    returns the image unchanged where the reference divides 0 by 0."""
    c = ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
         (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))[severity - 1]
    x = np.asarray(x, dtype=np.float32) / np.float32(255)
    liquid = _gaussian(rng.normal(size=x.shape[:2], loc=c[0], scale=c[1]), c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = _chamfer_distance(_canny(liquid, 50, 150))
        dist = _box3(np.minimum(dist, np.float32(20))).astype(np.float32).astype(np.uint8)
        dist = _equalize_hist(dist)
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = np.clip(ndimage.correlate(dist.astype(np.int64), emboss, mode="mirror"), 0, 255)
        dist = np.rint(_box3(dist)).astype(np.float32)
        m = liquid * dist
        top = m.max()
        m = (m / top if top > 0 else m) * np.float32(c[4])
        color = np.array([175, 238, 238], dtype=np.float32) / np.float32(255)
        return np.clip(x + m[..., None] * color, 0, 1) * np.float32(255)
    m = _gaussian((liquid > c[3]).astype(np.float32), c[4])
    m[m < 0.8] = 0
    color = np.array([63, 42, 20]) / 255.0 * m[..., None]
    return np.clip(x * (1 - m[..., None]) + color, 0, 1) * 255


# ---------------------------------------------------------------- registry

FAMILIES = CORRUPTION_FAMILIES  # the benchmark's names, defined with its robustness formulas
CORRUPTIONS: dict[str, Callable[[np.ndarray, int, Rng], np.ndarray]] = {
    name: globals()[name] for names in FAMILIES.values() for name in names
}
_CODE = {name: zlib.crc32(name.encode()) for name in CORRUPTIONS}


def corruption_seed(image_key: int, name: str, severity: int) -> list[int]:
    """The seed sequence of one (image, corruption, severity): the same in every run and on every rank."""
    return [0x1C0FFEE, _CODE[name], int(severity), int(image_key)]


def corrupt(image: np.ndarray, name: str, severity: int, image_key: int = 0, rng: Rng | None = None) -> np.ndarray:
    """``image`` (uint8 RGB ``(H, W, 3)``) with corruption ``name`` at ``severity`` (1-5), as uint8.

    ``image_key`` identifies the image (its index or a hash of its file name); the
    randomness is drawn from ``default_rng(corruption_seed(image_key, name, severity))``
    unless ``rng`` is given.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    rng = rng if rng is not None else np.random.default_rng(corruption_seed(image_key, name, severity))
    return np.uint8(CORRUPTIONS[name](image, severity, rng))


class CorruptedSource:
    """A source whose images are corrupted on load (masks unchanged); see :func:`corrupt`.

    The image key is the CRC-32 of the image file's name where the source has
    files (so an image is corrupted the same way whatever split or order it is
    read in), its index otherwise.
    """

    def __init__(self, base: Any, name: str, severity: int) -> None:
        if name not in CORRUPTIONS or severity not in SEVERITIES:
            raise ValueError(f"unknown corruption {name}-{severity}")
        self.base, self.name, self.severity = base, name, severity
        self.info, self.split = base.info, base.split

    def __len__(self) -> int:
        return len(self.base)

    def image_key(self, index: int) -> int:
        images = getattr(self.base, "images", None)
        return zlib.crc32(images[index].name.encode()) if isinstance(images, list) else index

    def corrupt_image(self, image: np.ndarray, index: int) -> np.ndarray:
        """The corrupted copy of the base's image ``index`` (``image``, as the base loaded it)."""
        return corrupt(image, self.name, self.severity, self.image_key(index))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.base.load(index)
        return self.corrupt_image(image, index), mask

    def load_mask(self, index: int) -> np.ndarray:
        return self.base.load_mask(index)

    def validate(self) -> None:
        self.base.validate()

    def class_pixel_counts(self) -> np.ndarray:
        return self.base.class_pixel_counts()

    def files(self) -> list:
        return self.base.files() if hasattr(self.base, "files") else []

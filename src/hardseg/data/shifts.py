"""Appearance shifts for cross-domain evaluation of the synthetic benchmark.

Every shift maps clean uint8 images ``(N, H, W, 3)`` to shifted ones of the
same shape and leaves the layout (and so the mask) untouched, so an accuracy
drop on a shifted set comes from the appearance change alone. Each shift has
severities 1 (mild) to 5 (strong):

``fog``
    Koschmieder's atmospheric scattering model ``I = J t + A (1 - t)`` with
    transmission ``t = exp(-beta d)``; ``d`` is a synthetic depth map (far at
    the top: a vertical gradient plus smooth noise, the same map at every
    severity) and ``beta`` grows with the severity, so contrast falls
    monotonically.
``night``
    Gamma darkening, a blue colour cast and sensor noise.
``noise``
    Additive Gaussian noise.
``blur``
    Gaussian blur (per channel).

Randomness is drawn from ``numpy.random.default_rng([seed, kind, index])`` per
image, so results do not depend on how the images are chunked.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SHIFT_KINDS: tuple[str, ...] = ("fog", "night", "noise", "blur")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Parameters per severity 1..5 (index 0 = severity 1).
FOG_BETA = (0.35, 0.7, 1.1, 1.6, 2.3)
FOG_AIRLIGHT = 215.0
NIGHT_BRIGHTNESS = (0.62, 0.48, 0.37, 0.28, 0.20)
NIGHT_GAMMA = (1.15, 1.3, 1.45, 1.6, 1.8)
NIGHT_NOISE = (2.0, 3.0, 4.0, 5.5, 7.0)
NIGHT_CAST = (0.80, 0.92, 1.20)  # RGB gains: bluish
NOISE_SIGMA = (6.0, 12.0, 20.0, 30.0, 45.0)
BLUR_SIGMA = (0.5, 0.8, 1.1, 1.5, 2.0)  # in pixels at the 64-px reference size

_KIND_CODE = {"fog": 101, "night": 102, "noise": 103, "blur": 104}


def shift_params(kind: str, severity: int) -> dict[str, float]:
    """The numbers behind ``kind`` at ``severity`` (recorded in meta.json)."""
    _check(kind, severity)
    i = severity - 1
    if kind == "fog":
        return {"beta": FOG_BETA[i], "airlight": FOG_AIRLIGHT}
    if kind == "night":
        return {"brightness": NIGHT_BRIGHTNESS[i], "gamma": NIGHT_GAMMA[i], "noise_sigma": NIGHT_NOISE[i]}
    if kind == "noise":
        return {"sigma": NOISE_SIGMA[i]}
    return {"sigma_at_64px": BLUR_SIGMA[i]}


def _check(kind: str, severity: int) -> None:
    if kind not in SHIFT_KINDS:
        raise ValueError(f"unknown shift {kind!r}; known: {', '.join(SHIFT_KINDS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """Unit-scale smooth noise: a coarse random grid upsampled bilinearly."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    return ndimage.zoom(grid, (h / (cells + 1), w / (cells + 1)), order=1, mode="nearest", grid_mode=True)[:h, :w]


def fog_depth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Synthetic depth in ~[0.15, 1.15]: far at the top, plus smooth undulation."""
    y = (np.arange(h, dtype=np.float64) + 0.5) / h
    d = 0.15 + 0.85 * (1.0 - y)[:, None] + 0.12 * _smooth_noise(rng, h, w)
    return np.clip(d, 0.0, 1.3)


def apply_shift(images: np.ndarray, kind: str, severity: int, *, seed: int, start: int = 0) -> np.ndarray:
    """Shift a batch of clean uint8 images.

    Args:
        images: uint8 array ``(N, H, W, 3)``.
        kind: one of :data:`SHIFT_KINDS`.
        severity: 1..5.
        seed: dataset seed.
        start: global index of ``images[0]`` (per-image streams are keyed by it).
    """
    _check(kind, severity)
    i = severity - 1
    n, h, w, _ = images.shape
    out = np.empty_like(images)
    for k in range(n):
        idx = start + k
        img = images[k].astype(np.float64)
        if kind == "fog":
            # The depth map does not depend on the severity, so fog thickens
            # monotonically from severity 1 to 5 on the same image.
            d = fog_depth(np.random.default_rng([seed, _KIND_CODE[kind], idx]), h, w)
            t = np.exp(-FOG_BETA[i] * d)[..., None]
            res = img * t + FOG_AIRLIGHT * (1.0 - t)
        elif kind == "night":
            rng = np.random.default_rng([seed, _KIND_CODE[kind], severity, idx])
            res = 255.0 * (img / 255.0) ** NIGHT_GAMMA[i] * NIGHT_BRIGHTNESS[i] * np.asarray(NIGHT_CAST)
            res = res + rng.normal(0.0, NIGHT_NOISE[i], size=res.shape)
        elif kind == "noise":
            rng = np.random.default_rng([seed, _KIND_CODE[kind], severity, idx])
            res = img + rng.normal(0.0, NOISE_SIGMA[i], size=img.shape)
        else:
            s = BLUR_SIGMA[i] * max(h, w) / 64.0
            res = ndimage.gaussian_filter(img, sigma=(s, s, 0), mode="reflect", truncate=3.0)
        out[k] = np.clip(np.rint(res), 0, 255).astype(np.uint8)
    return out

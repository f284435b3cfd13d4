"""Metrics equal a brute-force per-pixel computation."""

import math

import numpy as np
import torch

from hardseg.trainables.metrics import SegMetrics, boundary_band

LARGE, SMALL, THIN = (1, 2), (4,), (5,)
C = 6


def brute_band(t: np.ndarray, radius: int = 3) -> np.ndarray:
    n, h, w = t.shape
    edge = np.zeros_like(t, dtype=bool)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                if t[b, y, x] not in LARGE:
                    continue
                for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and t[b, yy, xx] in LARGE and t[b, yy, xx] != t[b, y, x]:
                        edge[b, y, x] = True
    band = np.zeros_like(edge)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                y0, y1, x0, x1 = max(0, y - radius), y + radius + 1, max(0, x - radius), x + radius + 1
                band[b, y, x] = edge[b, y0:y1, x0:x1].any() and t[b, y, x] != 255
    return band


def brute_iou(t: np.ndarray, p: np.ndarray, mask: np.ndarray, c: int) -> float:
    tp = fp = fn = 0
    for tv, pv, m in zip(t.ravel(), p.ravel(), mask.ravel()):
        if not m or tv == 255:
            continue
        tp += tv == c and pv == c
        fp += tv != c and pv == c
        fn += tv == c and pv != c
    return tp / (tp + fp + fn) if tp + fp + fn else float("nan")


def test_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    t = np.zeros((2, 20, 24), dtype=np.int64)
    t[:, :, 12:] = 1
    t[:, 10:, :] = 2
    t[0, 3:5, 3:6] = 4
    t[1, :, 6] = 5
    t[0, 0, :4] = 255
    t[1, 15:17, 2:4] = 3
    p = t.copy()
    flip = rng.random(t.shape) < 0.25
    p[flip] = rng.integers(0, C, size=flip.sum())
    p[p == 255] = 0

    m = SegMetrics(C, [f"c{i}" for i in range(C)], LARGE, SMALL, THIN)
    m.update(torch.from_numpy(t[:1]), torch.from_numpy(p[:1]))
    m.update(torch.from_numpy(t[1:]), torch.from_numpy(p[1:]))
    got = m.compute()

    every = np.ones_like(t, dtype=bool)
    ious = [brute_iou(t, p, every, c) for c in range(C)]
    assert math.isclose(got["miou"], np.nanmean(ious), rel_tol=1e-12)
    for c in range(C):
        assert math.isclose(got[f"iou/c{c}"], ious[c], rel_tol=1e-12)
    valid = t != 255
    assert math.isclose(got["pixel_acc"], (t[valid] == p[valid]).mean(), rel_tol=1e-12)

    band = brute_band(t)
    assert np.array_equal(boundary_band(torch.from_numpy(t), LARGE).numpy(), band)
    band_ious = [brute_iou(t, p, band, c) for c in range(C)]
    assert math.isclose(got["band_iou"], np.nanmean(band_ious), rel_tol=1e-12)
    assert math.isclose(got["small_iou"], ious[4], rel_tol=1e-12)
    tp = ((t == 4) & (p == 4)).sum()
    assert math.isclose(got["small_recall"], tp / (t == 4).sum(), rel_tol=1e-12)
    assert math.isclose(got["thin_iou"], ious[5], rel_tol=1e-12)


def test_band_ignores_thin_and_small_outlines():
    # A thin line inside one large region: no large-large boundary, so no band.
    t = torch.ones(1, 16, 16, dtype=torch.int64)
    t[0, :, 8] = 5
    t[0, 3, 3] = 4
    assert not boundary_band(t, LARGE).any()
    t[0, 12:, :] = 2
    band = boundary_band(t, LARGE)
    assert band[0, 9:15].any() and not band[0, :8].any()


def test_absent_class_is_left_out_of_mean():
    t = torch.zeros(1, 4, 4, dtype=torch.int64)
    m = SegMetrics(3, ["a", "b", "c"])
    m.update(t, t)
    out = m.compute()
    assert out["miou"] == 1.0 and math.isnan(out["iou/b"])

"""Small helpers that turn tensors into uint8 RGB images for ``Strategy.visuals``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from hardseg.data.info import default_palette
from hardseg.models.output import predict_classes

# A perceptually ordered ramp (dark blue → teal → yellow), interpolated linearly.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
IGNORE_RGB = (255, 255, 255)


def image_to_rgb(image: Tensor) -> np.ndarray:
    """(3, H, W) float image, any normalisation → (H, W, 3) uint8, min-max stretched."""
    x = image.detach().float().cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def labels_to_rgb(labels: Tensor, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8 with ``palette``; ignored pixels white."""
    lab = labels.detach().cpu().numpy().astype(np.int64)
    lut = np.zeros((max(len(palette), ignore_index + 1), 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = IGNORE_RGB
    return lut[np.clip(lab, 0, len(lut) - 1)]


def scalar_to_rgb(x: Tensor, lo: float, hi: float) -> np.ndarray:
    """(H, W) values in [lo, hi] → (H, W, 3) uint8 on a dark-to-bright ramp."""
    t = ((x.detach().float().cpu().numpy() - lo) / max(hi - lo, 1e-8)).clip(0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return ((1 - f) * _RAMP[i] + f * _RAMP[i + 1]).round().astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) images row by row, separated by ``gap`` white pixels."""
    h, w, _ = rows[0][0].shape
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, ncol * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img
    return out


def palette_for(num_classes: int, palette: Sequence[Sequence[int]] = ()) -> Sequence[Sequence[int]]:
    """The given palette, or the datasets' default one."""
    if palette:
        return palette
    return default_palette(num_classes)


@torch.no_grad()
def prediction_panel(images: Tensor, target: Tensor, logits: Tensor, extra: Sequence[np.ndarray] | None,
                     palette: Sequence[Sequence[int]], ignore_index: int = 255, max_rows: int = 4) -> np.ndarray:
    """Rows of image | ground truth | prediction [| extra[n]] for the first ``max_rows`` images."""
    rows = []
    pred = predict_classes(logits)
    for n in range(min(max_rows, images.shape[0])):
        row = [image_to_rgb(images[n]), labels_to_rgb(target[n], palette, ignore_index),
               labels_to_rgb(pred[n], palette, ignore_index)]
        if extra is not None:
            row.append(extra[n])
        rows.append(row)
    return grid(rows)

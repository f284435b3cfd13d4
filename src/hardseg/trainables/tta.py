"""Test-time augmentation (``eval.tta``) as mmsegmentation 0.22.1's ``aug_test``.

For each scale the batch is resized to scale × ``img_scale`` (each input's own
size by default; bilinear, sizes rounded as mmcv's ``imrescale`` keeping the
aspect ratio), run once (and once more flipped, with
``flip``), the logits are resized back to the input's size, turned into softmax
probabilities, flipped back, and all passes' probabilities are averaged. Each
pass is whatever ``forward`` does: a whole-image pass or sliding windows
(``eval.mode``), so a slide window applies at every scale, as in mmseg.

One known difference: mmseg resizes the uint8 image before normalising it;
here the normalised float image is resized (the same bilinear weights, without
mmseg's rounding of the resized image to whole grey levels).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hardseg.data.transforms import rescale_size


def scaled_size(h: int, w: int, scale: float, img_scale: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) of an ``h``×``w`` input at ``scale`` × ``img_scale`` ((width, height); None = the
    input's own size), keeping its aspect ratio: mmseg's MultiScaleFlipAug + Resize(keep_ratio=True)."""
    base_w, base_h = img_scale if img_scale is not None else (w, h)
    new_w, new_h = rescale_size(w, h, (int(base_w * scale), int(base_h * scale)))
    return new_h, new_w


@torch.no_grad()
def tta_probs(forward: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float], flip: bool,
              img_scale: tuple[int, int] | None = None, align_corners: bool = False) -> Tensor:
    """Softmax probabilities (N, C, H, W), float32, averaged over ``scales`` × (no flip, flip).

    ``forward`` maps a batch to logits at that batch's size; ``img_scale``: see :func:`scaled_size`. With
    ``scales=[1.0]``, no flip and no ``img_scale`` this is exactly ``forward(images).float().softmax(1)``.
    """
    h, w = images.shape[-2:]
    total: Tensor | None = None
    passes = 0
    for scale in scales:
        size = scaled_size(h, w, scale, img_scale)
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            logits = forward(x.flip(-1) if flipped else x).float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=align_corners)
            probs = logits.softmax(1)
            if flipped:
                probs = probs.flip(-1)
            total = probs if total is None else total.add_(probs)
            passes += 1
    assert total is not None
    return total.div_(passes)

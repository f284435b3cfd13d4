"""Bilinear resizing of feature maps and logits, fast on CPU.

Bilinear interpolation without antialiasing is separable and linear: resizing
(h, w) to (H, W) is ``A_H @ x @ A_Wᵀ`` with A an (out × in) matrix holding two
weights per row (PyTorch's source-index rule, ``align_corners`` either way).
On CPU the two matrix products, forward and backward, take 3–4× less time than
``F.interpolate`` (whose backward is a scalar scatter loop): 0.8 vs 3.3 ms for
16×7×16×16 → 64×64, 1.2 vs 3.6 ms for 16×128×8×8 → 16×16 on 2 threads.
Upsampling logits and features is a large share of what the structural
strategies cost on small CPU models (``benchmarks/strategy_cost.py``).
Elsewhere (CUDA) ``F.interpolate`` is used; both agree to float rounding.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int, align_corners: bool, dtype: torch.dtype,
                         device: torch.device) -> Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, as ``F.interpolate(mode="bilinear")`` samples."""
    dst = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


def resize_bilinear(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (N, K, h, w) to ``size`` (no antialiasing); a no-op when it already matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if x.device.type != "cpu":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    if torch.is_autocast_enabled("cpu"):  # F.interpolate keeps x's dtype under autocast; so do the products
        with torch.autocast("cpu", enabled=False):
            return resize_bilinear(x, size, align_corners)
    rows = interpolation_matrix(x.shape[-2], size[0], align_corners, x.dtype, x.device)
    cols = interpolation_matrix(x.shape[-1], size[1], align_corners, x.dtype, x.device)
    return rows @ x @ cols.T

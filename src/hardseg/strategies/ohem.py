"""OHEM pixel sampling (strategies.md §2; mmsegmentation ``OHEMPixelSampler``).

Under ``no_grad``, :func:`~hardseg.strategies.functional.ohem_keep_mask`
selects the hard pixels of the main head; the loss is Σ(kept ℓ) divided by
the number of non-ignored pixels (``normalize: valid``, mmseg ≥ 0.23 with
``avg_non_ignore``) or of kept pixels (``normalize: kept``) **(choice**,
exposed**)**. ``min_kept`` is per image as in mmseg (pitfall 4);
``min_kept_fraction``, when set, replaces it by ⌈fraction · H · W⌉ per image
(100000 was ≈17 % of a 769×769 crop). ``thresh: null`` selects by loss. The
auxiliary head keeps plain CE. In loss mode the ranking uses the per-pixel
loss as shaped so far (focal, class weights), as mmseg ranks by its
configured loss.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field
from torch import Tensor

from hardseg.models import SegOutput
from hardseg.strategies.base import PixelLoss, Strategy, StrategyConfig
from hardseg.strategies.functional import ohem_keep_mask, valid_mean
from hardseg.strategies.registry import register_strategy


class OHEMConfig(StrategyConfig):
    thresh: float | None = Field(0.7, gt=0, le=1, description="confidence threshold; None selects by loss")
    min_kept: int = Field(100000, ge=0, description="pixels kept at least, per image")
    min_kept_fraction: float | None = Field(None, ge=0, le=1,
                                            description="if set, min_kept = ceil(fraction · pixels per image)")
    normalize: Literal["valid", "kept"] = Field("valid", description="divide by non-ignored or by kept pixels")


@register_strategy("ohem")
class OHEM(Strategy):
    kind = "weighting"
    order = 30
    Config = OHEMConfig

    @classmethod
    def normalisation(cls, cfg: OHEMConfig) -> str | None:
        return "'strategy_params.ohem.normalize' = kept divides by the kept pixels" if cfg.normalize == "kept" else None

    def min_kept_per_image(self, target: Tensor) -> int:
        if self.cfg.min_kept_fraction is None:
            return self.cfg.min_kept
        return math.ceil(self.cfg.min_kept_fraction * target.shape[-2] * target.shape[-1])

    def shape(self, px: PixelLoss) -> None:
        keep = ohem_keep_mask(px.logits, px.target, self.cfg.thresh, self.min_kept_per_image(px.target),
                              self.ctx.ignore_index, pixel_loss=px.loss.detach())
        px.keep = px.keep & keep
        px.loss = px.loss * px.keep

    def reduce(self, px: PixelLoss, out: SegOutput, main_key: str) -> dict[str, Tensor] | None:
        return {main_key: valid_mean(px.loss, px.keep)} if self.cfg.normalize == "kept" else None

"""OHEM pixel sampling (docs/strategies.md §2; mmsegmentation ``OHEMPixelSampler``).

Under ``no_grad``, :func:`~hardseg.strategies.functional.ohem_keep_mask`
selects the hard pixels of the main head and zeroes the others; the loss is
Σ(kept ℓ) divided by

* ``normalize`` unset (default): what ``loss.average`` says: the non-ignored
  pixels (``valid``, mmseg ≥ 0.23 with ``avg_non_ignore=True``) or all pixels
  (``all``, mmseg's default ``avg_non_ignore=False``, the HL paper's OHEM row);
* ``normalize: valid`` / ``all``: that count, whatever ``loss.average`` is;
* ``normalize: kept``: the kept pixels (other codebases) **(choice**, exposed**)**.

An explicit ``normalize`` cannot be combined with ``hl`` (HL divides by its
Σ w over all pixels; the setting would be silently overridden), so it is
rejected with one line. ``min_kept`` is per image as in mmseg (pitfall 4);
``min_kept_fraction``, when set, replaces it by ⌈fraction · H · W⌉ per image
(100000 was ≈17 % of a 769×769 crop). When ``min_kept`` ≥ the pixels of an
image every valid pixel is kept except possibly the most confident one: OHEM
degenerates to CE. :func:`degenerate_warning` says so; the platform logs it
and tags the MLflow run ``hardseg.warning.ohem``, and the strategy logs it
once per process when it first sees such a batch. ``thresh: null`` selects
by loss. The auxiliary head keeps plain CE. In loss mode the ranking uses the
per-pixel loss as shaped so far (focal, class weights), as mmseg ranks by
its configured loss.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from pydantic import Field
from torch import Tensor

from hardseg.models import SegOutput
from hardseg.strategies.base import Phase, PixelLoss, Setting, Strategy, StrategyConfig
from hardseg.strategies.functional import average_pixels, ohem_keep_mask, valid_mean
from hardseg.strategies.registry import register_strategy

log = logging.getLogger(__name__)


class OHEMConfig(StrategyConfig):
    thresh: float | None = Field(0.7, gt=0, le=1, description="confidence threshold; None selects by loss")
    min_kept: int = Field(100000, ge=0, description="pixels kept at least, per image")
    min_kept_fraction: float | None = Field(None, ge=0, le=1,
                                            description="if set, min_kept = ceil(fraction · pixels per image)")
    normalize: Literal["valid", "all", "kept"] | None = Field(
        None, description="divide Σ kept ℓ by the non-ignored, all or kept pixels; None = loss.average")


def min_kept_per_image(cfg: OHEMConfig, pixels_per_image: int) -> int:
    """``min_kept``, or ⌈min_kept_fraction · pixels⌉ when the fraction is set."""
    if cfg.min_kept_fraction is None:
        return cfg.min_kept
    return math.ceil(cfg.min_kept_fraction * pixels_per_image)


def degenerate_warning(cfg: OHEMConfig, pixels_per_image: int) -> str | None:
    """A one-line warning when ``min_kept`` ≥ the pixels of an image (OHEM keeps every pixel), else None."""
    if cfg.min_kept_fraction is not None or cfg.min_kept < pixels_per_image:
        return None
    return (f"'strategy_params.ohem.min_kept' = {cfg.min_kept} >= the {pixels_per_image} pixels of an image: OHEM "
            f"keeps every pixel and degenerates to CE; set 'strategy_params.ohem.min_kept_fraction' (e.g. 0.17) "
            f"or a smaller min_kept")


@register_strategy("ohem")
class OHEM(Strategy):
    phase = Phase.SELECT_PIXELS
    Config = OHEMConfig
    _warned = False  # per process: the degenerate case is logged once

    @classmethod
    def config_warning(cls, cfg: OHEMConfig, setting: Setting) -> str | None:
        return None if setting.pixels_per_image is None else degenerate_warning(cfg, setting.pixels_per_image)

    @classmethod
    def normalisation(cls, cfg: OHEMConfig) -> str | None:
        if cfg.normalize is None:
            return None
        return f"'strategy_params.ohem.normalize' = {cfg.normalize} divides by the {cfg.normalize} pixels"

    def shape(self, px: PixelLoss) -> None:
        pixels = px.target.shape[-2] * px.target.shape[-1]
        if not OHEM._warned and (msg := degenerate_warning(self.cfg, pixels)):
            OHEM._warned = True
            log.warning(msg)
        keep = ohem_keep_mask(px.logits, px.target, self.cfg.thresh, min_kept_per_image(self.cfg, pixels),
                              self.ctx.ignore_index, pixel_loss=px.loss.detach())
        px.keep = px.keep & keep
        px.loss = px.loss * px.keep

    def reduce(self, px: PixelLoss, out: SegOutput, main_key: str) -> dict[str, Tensor] | None:
        if self.cfg.normalize is None:
            return None
        if self.cfg.normalize == "kept":
            return {main_key: valid_mean(px.loss, px.keep)}
        return {main_key: average_pixels(px.loss, px.valid, self.cfg.normalize)}

"""Class-balanced cross-entropy (strategies.md §1, the HL paper's loss comparison).

ℓ'_p = w_{y_p} · ℓ_p with per-class weights from the training split's pixel
frequencies (:func:`~hardseg.strategies.functional.class_balance_weights`:
``inverse`` 1/(K·f_c), or ``median`` median-frequency f_med/f_c), averaged
over the non-ignored pixels **(choice**, mmsegmentation's ``avg_non_ignore``,
not PyTorch's Σw normalisation, so that it composes with OHEM and HL**)**.
Needs ``StrategyContext.class_frequencies``; raises ConfigError without them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hardseg.errors import ConfigError
from hardseg.strategies.base import PixelLoss, Strategy, StrategyConfig, StrategyContext
from hardseg.strategies.functional import class_balance_weights, class_weighted_pixel_loss
from hardseg.strategies.registry import register_strategy


class CBCEConfig(StrategyConfig):
    mode: Literal["inverse", "median"] = Field("median", description="inverse frequency or median-frequency balancing")
    max_weight: float | None = Field(None, gt=0, description="clip the class weights from above; None = no clip")


@register_strategy("cb_ce")
class ClassBalancedCE(Strategy):
    kind = "weighting"
    order = 20
    Config = CBCEConfig

    def __init__(self, cfg: CBCEConfig, ctx: StrategyContext):
        super().__init__(cfg, ctx)
        freq = ctx.class_frequencies
        if freq is None:
            raise ConfigError("'cb_ce' in 'strategies' needs the training split's class pixel frequencies, which this "
                              "dataset does not provide; drop 'cb_ce' or use a dataset that has them")
        if len(freq) != ctx.num_classes:
            raise ConfigError(f"'cb_ce': got {len(freq)} class frequencies for {ctx.num_classes} classes")
        try:
            self.class_weights = class_balance_weights(freq, cfg.mode, cfg.max_weight)
        except ValueError as err:
            raise ConfigError(f"'cb_ce': {err}") from None

    def shape(self, px: PixelLoss) -> None:
        px.loss = class_weighted_pixel_loss(px.loss, px.target, self.class_weights, self.ctx.ignore_index)

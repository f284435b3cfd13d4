"""Class-balanced cross-entropy (docs/strategies.md §6; the HL paper's loss comparison).

ℓ'_p = w_{y_p} · ℓ_p, averaged like CE (``loss.average``: over the valid
pixels, or over all pixels as mmsegmentation 0.22.1's ``class_weight`` does),
not by Σ w as PyTorch's ``weight=`` does, so that it composes with OHEM and
HL **(choice)**. The class weights w, in order of precedence:

* ``weights``: an explicit list (one per class), or the name of a fixed
  vector from :data:`NAMED_WEIGHTS`. ``cityscapes`` is the 19-class vector the
  HL paper's class-balanced CE row used (its mmsegmentation configs and
  training logs; max/min ≈ 1.38), a vector common to many Cityscapes
  codebases; it needs a 19-class dataset.
* otherwise from the training split's pixel frequencies
  (:func:`~hardseg.strategies.functional.class_balance_weights`): ``median``
  (median-frequency balancing, Eigen & Fergus; the default) or ``inverse``
  (1/(K·f_c)), optionally clipped by ``max_weight``. These are documented
  alternatives, far more skewed than the paper's vector (max/min of tens to
  hundreds on Cityscapes). Needs ``StrategyContext.class_frequencies``;
  raises ConfigError without them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from hardseg.errors import ConfigError
from hardseg.strategies.base import Phase, PixelLoss, Strategy, StrategyConfig, StrategyContext
from hardseg.strategies.functional import class_balance_weights, class_weighted_pixel_loss
from hardseg.strategies.registry import register_strategy

KEY = "strategy_params.cb_ce"
# Cityscapes trainIds 0..18 (road … bicycle), the HL paper's class-balanced CE.
CITYSCAPES_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                      0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)
NAMED_WEIGHTS: dict[str, tuple[float, ...]] = {"cityscapes": CITYSCAPES_WEIGHTS}


class CBCEConfig(StrategyConfig):
    weights: list[float] | Literal["cityscapes"] | None = Field(
        None, description="explicit class weights (one per class) or a named vector (cityscapes: the HL paper's); "
        "None = from the class frequencies (mode, max_weight)")
    mode: Literal["inverse", "median"] = Field("median", description="inverse frequency or median-frequency balancing")
    max_weight: float | None = Field(None, gt=0, description="clip the class weights from above; None = no clip")


@register_strategy("cb_ce")
class ClassBalancedCE(Strategy):
    phase = Phase.CLASS_WEIGHTS
    Config = CBCEConfig

    def __init__(self, cfg: CBCEConfig, ctx: StrategyContext):
        super().__init__(cfg, ctx)
        self.class_weights = self._weights(cfg, ctx)

    @staticmethod
    def _weights(cfg: CBCEConfig, ctx: StrategyContext) -> torch.Tensor:
        if cfg.weights is not None:
            w = NAMED_WEIGHTS[cfg.weights] if isinstance(cfg.weights, str) else tuple(cfg.weights)
            if len(w) != ctx.num_classes:
                name = f"'{cfg.weights}' has" if isinstance(cfg.weights, str) else "gives"
                raise ConfigError(f"invalid '{KEY}.weights': {name} {len(w)} class weights for a dataset of "
                                  f"{ctx.num_classes} classes")
            if any(v < 0 for v in w):
                raise ConfigError(f"invalid '{KEY}.weights': class weights must be >= 0")
            return torch.tensor(w, dtype=torch.float32)
        freq = ctx.class_frequencies
        if freq is None:
            raise ConfigError(f"'cb_ce' in 'strategies' needs the training split's class pixel frequencies, which "
                              f"this dataset does not provide; set '{KEY}.weights', drop 'cb_ce' or use a dataset "
                              "that has them")
        if len(freq) != ctx.num_classes:
            raise ConfigError(f"'cb_ce': got {len(freq)} class frequencies for {ctx.num_classes} classes")
        try:
            return class_balance_weights(freq, cfg.mode, cfg.max_weight)
        except ValueError as err:
            raise ConfigError(f"'cb_ce': {err}") from None

    def shape(self, px: PixelLoss) -> None:
        px.loss = class_weighted_pixel_loss(px.loss, px.target, self.class_weights, self.ctx.ignore_index)

"""Focal loss (docs/strategies.md §3; Lin et al., arXiv 1708.02002).

Replaces the main head's per-pixel CE by the focal loss
(:func:`~hardseg.strategies.functional.focal_pixel_loss`), averaged like CE
(``loss.average``). ``softmax`` (default, the HL paper's comparison):
α · (1 − p_y)^γ · ℓ, γ = 2, α = 1; ``sigmoid``: mmsegmentation's one-vs-all
``FocalLoss`` (γ = 2, α = 0.5), whose value hardseg reproduces exactly under
``loss.average: all`` (mmseg averages over all N·H·W·C elements; under
``valid`` the value is mmseg's ÷ the valid fraction). **(choice)**
``alpha: null`` means the mode's default (1.0 softmax, 0.5 sigmoid).

With ``cb_ce`` the ground-truth class's weight w_y multiplies the pixel's
focal term, in both modes **(choice)**: one rule for every weighting (cb_ce
acts on the per-pixel loss, whatever defined it). mmsegmentation's sigmoid
``FocalLoss(class_weight=…)`` instead weights each channel c's one-vs-all term
by w_c; the two agree when the weights are uniform and differ by the
off-class channels' share otherwise (docs/strategies.md §3).

Labels are never overwritten in place (§3 pitfall); the auxiliary head keeps
plain CE.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from hardseg.strategies.base import Phase, Strategy, StrategyConfig
from hardseg.strategies.functional import focal_pixel_loss
from hardseg.strategies.registry import register_strategy

DEFAULT_ALPHA = {"softmax": 1.0, "sigmoid": 0.5}


class FocalConfig(StrategyConfig):
    mode: Literal["softmax", "sigmoid"] = Field("softmax", description="softmax multi-class or sigmoid one-vs-all")
    gamma: float = Field(2.0, ge=0, description="focusing parameter γ")
    alpha: float | None = Field(None, gt=0, description="α; None = 1.0 (softmax) or 0.5 (sigmoid)")

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_for_sigmoid(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("mode") == "sigmoid" and v > 1:
            raise ValueError("with mode 'sigmoid' alpha must be in (0, 1]")
        return v


@register_strategy("focal")
class Focal(Strategy):
    phase = Phase.BASE_LOSS
    Config = FocalConfig

    @property
    def alpha(self) -> float:
        return DEFAULT_ALPHA[self.cfg.mode] if self.cfg.alpha is None else self.cfg.alpha

    def base_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_pixel_loss(logits, target, self.cfg.gamma, self.alpha, self.ctx.ignore_index, self.cfg.mode)

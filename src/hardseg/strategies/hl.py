"""Learned Hardness Level map (docs/strategies.md §1; Xiao et al., arXiv 2305.08462).

Branch: ``model.new_head(1)``, a fresh copy of the decode head's architecture
with one output channel, applied to the decode head's input **detached**
(``tuple/dict of t.detach()``): no gradient from the branch reaches the
backbone. Its logits s give w = σ(resize(s)) + offset ∈ [0.1, 1.1] and
w̃ = w / Σ w over every pixel of the per-device batch, ignored ones included;
L_seg = Σ sg(w̃) ⊙ ℓ replaces the main head's loss and L_HL = −λ Σ w̃ ⊙ sg(ℓ)
trains the branch (:func:`~hardseg.strategies.functional.hl_losses`). Terms:
``hl/seg``, ``hl/hl``; the auxiliary head keeps 0.4 · CE (objective).

With uniform weights L_seg is the mean of ℓ over *all* pixels: it equals the
CE baseline under ``loss.average: all`` (the reference's mmsegmentation
0.22.1) and is the valid fraction × CE under ``valid``.

In a composition ℓ is the per-pixel loss the other weightings produce
(focal, class weights, OHEM's selection), so HL weights the selected pixels;
an explicit ``ohem.normalize`` is rejected (HL's normalisation would
override it).

Knobs: λ only scales the branch's gradient, so it acts under SGD (the
reference: one SGD group, lr 0.01, momentum 0.9, wd 5e-4, poly) and is
cancelled almost entirely by Adam/AdamW's per-parameter normalisation.
``lr_mult`` puts the branch in its own optimiser group at lr × lr_mult
(1.0 = the reference), which acts under both; search λ under SGD and
``lr_mult`` under AdamW (presets ``hl.yaml``, ``quickstart.yaml``).

Inference: the branch is training-only; :meth:`export` returns None, so the
exported model is the network alone (the baseline's parameters and output).
``visuals`` returns ``hl/panel``: rows of image | ground truth | prediction |
hardness w (dark = 0.1·easy, bright = 1.1·hard).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn as nn
from pydantic import Field
from torch import Tensor

from hardseg.models import SegModel, SegOutput
from hardseg.strategies.base import Phase, PixelLoss, Setting, Strategy, StrategyConfig
from hardseg.strategies.functional import hl_losses, hl_weights
from hardseg.strategies.registry import register_strategy
from hardseg.strategies.visuals import palette_for, prediction_panel, scalar_to_rgb


class HLConfig(StrategyConfig):
    lam: float = Field(0.01, gt=0, description="λ, scale of L_HL (the branch's gradient)")
    offset: float = Field(0.1, gt=0, description="w = σ(s) + offset; bounds the weights' ratio")
    lr_mult: float = Field(1.0, gt=0, description="the branch's learning rate = train.lr × lr_mult (own optimiser "
                           "group); acts under AdamW, where λ does not")


def detach_tree(x: Any) -> Any:
    """``x.detach()`` for a tensor, or for every tensor of a dict / tuple / list."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, dict):
        return {k: detach_tree(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(detach_tree(v) for v in x)
    return x


class HLBranch(nn.Module):
    """A copy of the decode head (1 channel) on detached head inputs (pitfall 2)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, head_input: Any) -> Tensor:
        return self.head(detach_tree(head_input))


@register_strategy("hl")
class HardnessLevel(Strategy):
    phase = Phase.WEIGHT_AND_REDUCE
    Config = HLConfig
    align_corners = False

    @property
    def lr_mult(self) -> float:
        return self.cfg.lr_mult

    @classmethod
    def config_warning(cls, cfg: HLConfig, setting: Setting) -> str | None:
        """λ set explicitly under Adam/AdamW, which cancel it (module docstring), else None."""
        if "lam" not in cfg.model_fields_set or setting.optimizer == "sgd":
            return None
        return (f"'strategy_params.hl.lam' has no effect under train.optimizer={setting.optimizer} "
                f"(its per-parameter step normalisation cancels λ, docs/strategies.md §1): set "
                f"train.optimizer=sgd, or 'strategy_params.hl.lr_mult' to change the branch's step")

    @classmethod
    def normalisation(cls, cfg: HLConfig) -> str | None:
        return "'hl' normalises the main loss by Σ w over all pixels"

    def build_modules(self, model: SegModel) -> dict[str, nn.Module]:
        self.align_corners = model.align_corners
        return {"branch": HLBranch(model.new_head(1))}

    def run_modules(self, modules: nn.ModuleDict, out: SegOutput) -> None:
        out.extras["hl/logits"] = modules["branch"](out.head_input)

    def reduce(self, px: PixelLoss, out: SegOutput, main_key: str) -> dict[str, Tensor]:
        l_seg, l_hl, _ = hl_losses(px.loss, out.extras["hl/logits"], self.cfg.lam, self.cfg.offset, self.align_corners)
        return {"hl/seg": l_seg, "hl/hl": l_hl}

    def visuals(self, out: SegOutput, images: Tensor, target: Tensor) -> dict[str, np.ndarray]:
        off = self.cfg.offset
        w = hl_weights(out.extras["hl/logits"].detach(), target.shape[-2:], off, self.align_corners)
        hard = [scalar_to_rgb(w[n], off, 1 + off) for n in range(w.shape[0])]
        palette = palette_for(self.ctx.num_classes, self.ctx.palette)
        return {"hl/panel": prediction_panel(images, target, out.logits, hard, palette, self.ctx.ignore_index)}

"""Self-Regulation (docs/strategies.md §4; Zhang et al., ICCV 2021, arXiv 2108.09702; demo ``dongzhang89/SR-SS``).

Exits, as in the demo (``lib/models/resnet.py`` returns the stem's output
before max-pooling at stride 2, layer1, layer2 and layer3; ``deeplab.py``
puts an exit on each): one exit on every feature of ``out.features`` except
the deepest, which feeds the final head, unless ``exits`` names them (naming
the deepest adds an exit there too, a documented non-demo option). Each exit:
[conv3×3 → ``exit_channels``, BN, ReLU]×2 → conv1×1 → C logits o_i
(upsampled to label size) and GAP(o_i) → FC(C→C) → presence logits; the
final head gets its own FC on GAP(main logits). Losses
(:func:`~hardseg.strategies.functional.self_regulation_losses`), logged as

* ``sr/cls`` = cls_weight (0.2) · Σ BCE(p_i, c) over exits and final head;
* ``sr/seg`` = seg_weight (0.8) · Σ CE(o_i, y) over the exits;
* ``sr/l``   = sr_l_weight (1.0) · SR-L (deep teaches shallow);
* ``sr/f``   = sr_f_weight (1.0) · SR-F (shallow teaches deep);

SR-L and SR-F are 0 until ``progress ≥ warmup`` (0.25 = 10k of the demo's
40k iterations). **(choices)** The final head's CE is the run's main loss
(CE, or what the weighting strategies make of it) at weight 1, not 0.8 · CE
as in the demo's sum; pseudo-labels of SR-F are ignored where y is;
``variant: paper`` uses KL(τ) on logits for SR-L and MSE of channel-normalised
exit features for SR-F (see the functional). An exit on a feature finer than
``min_exit_stride`` (2: the stride of the demo's shallowest exit, ResNet's
stem before max-pooling) average-pools it to that stride first; on ResNet and
MobileNetV3 backbones every feature is already at stride ≥ 2 (no pooling, the
demo exactly), on tiny_seg the stride-1 stem is pooled to stride 2.
``exit_channels`` defaults to the demo's 256; scale it down for small models:
``benchmarks/strategy_cost.py`` and docs/strategies.md §4 give the measured
step cost.

Inference: exits and FCs are training-only; the exported model is the
network alone.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from hardseg.errors import ConfigError
from hardseg.models import SegModel, SegOutput, resize_bilinear
from hardseg.strategies.base import Phase, Strategy, StrategyConfig
from hardseg.strategies.functional import self_regulation_losses
from hardseg.strategies.registry import register_strategy


class SRConfig(StrategyConfig):
    variant: Literal["demo", "paper"] = Field("demo", description="demo code's recipe or the paper's distillation")
    cls_weight: float = Field(0.2, ge=0, description="weight of the class-presence BCE")
    seg_weight: float = Field(0.8, ge=0, description="weight of the exits' CE")
    sr_l_weight: float = Field(1.0, ge=0, description="weight of SR-L (deep teaches shallow)")
    sr_f_weight: float = Field(1.0, ge=0, description="weight of SR-F (shallow teaches deep)")
    warmup: float = Field(0.25, ge=0, le=1, description="fraction of training before SR-L and SR-F start")
    exit_channels: int = Field(256, ge=1, description="width of each exit's two conv3×3 layers")
    exits: list[str] | None = Field(None, min_length=1, description="feature names with an exit; None = all but "
                                    "the deepest (the demo's stem, layer1, layer2, layer3 on ResNet)")
    tau: float = Field(1.0, gt=0, description="KL temperature of the paper variant's SR-L")
    min_exit_stride: int = Field(2, ge=1, description="exits on finer features average-pool them to this stride "
                                 "first (2: the demo's shallowest exit)")


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Exit(nn.Module):
    """[conv3×3, BN, ReLU]×2 → conv1×1 → C logits; GAP → FC(C→C) → presence logits."""

    def __init__(self, cin: int, width: int, num_classes: int):
        super().__init__()
        self.hidden = nn.Sequential(*conv_bn_relu(cin, width), *conv_bn_relu(width, width))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.fc = nn.Linear(num_classes, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.hidden(x)
        o = self.classifier(h)
        return o, self.fc(o.mean(dim=(2, 3))), h


@register_strategy("self_regulation")
class SelfRegulation(Strategy):
    phase = Phase.EXTRA_TERMS
    Config = SRConfig
    align_corners = False

    def build_modules(self, model: SegModel) -> dict[str, nn.Module]:
        names = self.cfg.exits or list(model.feature_channels)[:-1]
        if not names:
            raise ConfigError("'self_regulation' needs a feature shallower than the deepest for its exits; this model "
                              "exposes one feature: set 'strategy_params.self_regulation.exits'")
        unknown = [n for n in names if n not in model.feature_channels]
        if unknown:
            raise ConfigError(f"invalid 'strategy_params.self_regulation.exits': {unknown} are not features of the "
                              f"model; allowed: {', '.join(model.feature_channels)}")
        names = [n for n in model.feature_channels if n in names]  # shallow → deep
        self.align_corners = model.align_corners
        C = model.num_classes
        return {"exits": nn.ModuleDict({n: Exit(model.feature_channels[n], self.cfg.exit_channels, C) for n in names}),
                "final_fc": nn.Linear(C, C)}

    def run_modules(self, modules: nn.ModuleDict, out: SegOutput) -> None:
        size = out.logits.shape[-2:]
        logits, presence, hidden = [], [], []
        for name, exit_ in modules["exits"].items():
            feat = out.features[name]
            pool = self.cfg.min_exit_stride * feat.shape[-1] // size[-1]
            o, p, h = exit_(F.avg_pool2d(feat, pool, ceil_mode=True) if pool > 1 else feat)
            logits.append(resize_bilinear(o, size, self.align_corners))
            presence.append(p)
            hidden.append(h)
        out.extras["sr/exits"] = logits
        out.extras["sr/presence"] = presence
        if self.cfg.variant == "paper":
            out.extras["sr/hidden"] = hidden
        out.extras["sr/final_presence"] = modules["final_fc"](out.logits.mean(dim=(2, 3)))

    def terms(self, out: SegOutput, target: Tensor, progress: float) -> dict[str, Tensor]:
        c = self.cfg
        d = self_regulation_losses(out.extras["sr/exits"], out.extras["sr/presence"], out.logits,
                                   out.extras["sr/final_presence"], target, self.ctx.ignore_index, c.variant, c.tau,
                                   out.extras.get("sr/hidden"), regulate=progress >= c.warmup)
        return {"sr/cls": c.cls_weight * d["cls"], "sr/seg": c.seg_weight * d["seg"],
                "sr/l": c.sr_l_weight * d["sr_l"], "sr/f": c.sr_f_weight * d["sr_f"]}

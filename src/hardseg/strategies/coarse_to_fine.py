"""Coarse-to-fine stacked supervision (docs/strategies.md §5; Hu et al., ICME 2018, arXiv 1804.08256).

Levels: the hierarchy's coarse levels (coarsest first; ``hierarchy`` in the
config, else ``StrategyContext.hierarchy``) and the dataset's classes last.
Stage 0 is the network's own decode head, rebuilt (``model.new_head``) to
predict level 0, as in the paper's ``pspnet_stack``, whose stage 0 is its PSP
head. Stage l ≥ 1 takes concat[deep feature, raw scores of stage l−1 (not
softmaxed, not detached), a shallower skip feature], everything resized to
the skip's resolution. As in ``pspnet_stack`` (3 levels: stage 1 on the
stride-8 ``layer3`` next to the stride-8 deep feature, stage 2 on the stride-4
``layer1``), the middle stages run at the deep feature's resolution with the
``mid_skip`` feature resized to it, and only the last (finest) stage runs at
the ``skip`` feature's resolution. Each stage l ≥ 1 is two conv3×3-BN-ReLU
then a conv1×1 classifier; all scores are upsampled to label size.

The finest stage *is* the prediction: ``run_modules`` puts it in
``out.logits``, so the main loss (CE, or the weighting strategies) applies to
it — that is the paper's finest-level term with w = 1. Terms: ``c2f/l0``,
``c2f/l1``, … = w_l · CE(p_l, y_l) for the coarse levels (ignore stays ignore
at every level, :func:`~hardseg.strategies.functional.coarsen_labels`).

**(choices)** The deep feature is the last of ``model.feature_channels`` (the
paper's ``f``, the backbone's output), the skip the shallowest feature at
stride ≥ 4 (ResNet's layer1, MobileNetV3's stride-4 block, tiny_seg's
stage4), the middle stages' skip the feature just before the deep one
(ResNet's layer3 as in the paper, MobileNetV3's stride-16 block, tiny_seg's
stage4 averaged down to stride 8 by the bilinear resize);
``deep``/``skip``/``mid_skip`` override them. Stage 0's scores enter stage 1
at the decode head's own resolution, resized. The width of stages l ≥ 1
defaults to the level's class count, as in the paper's
``segnetUp(in, n_classes)``, and a conv1×1 classifier replaces the paper's
ReLU on the logits. Cost (``benchmarks/strategy_cost.py``, ``benchmarks/README.md``): the
finest stage runs at the skip's resolution, so a stride-2 skip
(``skip: stage2``) costs far more than the default stride-4 one.

Inference: the stages are the model; :meth:`export` returns
:class:`CoarseToFineNet` (the network with its level-0 head, then the stages)
whose ``logits`` are the finest stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field, field_validator
from torch import Tensor

from hardseg.errors import ConfigError
from hardseg.models import SegModel, SegOutput, resize_bilinear
from hardseg.strategies.base import Phase, Strategy, StrategyConfig, StrategyContext
from hardseg.strategies.functional import coarse_to_fine_losses
from hardseg.strategies.registry import register_strategy

KEY = "strategy_params.coarse_to_fine"


class C2FConfig(StrategyConfig):
    hierarchy: list[list[int]] | None = Field(
        None, description="coarse levels, coarsest first: level[l][fine class] = coarse id; None = the dataset's")
    level_weights: list[float] | None = Field(None, description="w_l per coarse level; None = 1 each (the paper)")
    stage_channels: int | None = Field(None, ge=1, description="width of stages 1 …; None = the level's class count")
    deep: str | None = Field(None, description="deep feature name; None = the deepest")
    skip: str | None = Field(None, description="the finest stage's skip feature; None = the shallowest at stride >= 4")
    mid_skip: str | None = Field(None, description="the middle stages' skip feature, resized to the deep one's "
                                 "resolution; None = the feature just before the deep one")

    @field_validator("hierarchy")
    @classmethod
    def _hierarchy(cls, v: list[list[int]] | None) -> list[list[int]] | None:
        if v is None:
            return v
        if not v or any(not level for level in v):
            raise ValueError("needs at least one non-empty level")
        if len({len(level) for level in v}) != 1:
            raise ValueError("every level must map the same number of fine classes")
        if any(c < 0 for level in v for c in level):
            raise ValueError("coarse ids must be >= 0")
        return v

    @field_validator("level_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(w < 0 for w in v):
            raise ValueError("weights must be >= 0")
        return v


class Stage(nn.Module):
    """Two conv3×3-BN-ReLU, then a conv1×1 to the level's classes."""

    def __init__(self, cin: int, width: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class C2FStages(nn.Module):
    """Stages 1 … L−1; stage 0 is the network's decode head (level 0)."""

    def __init__(self, deep: str, mid_skip: str, skip: str, channels: dict[str, int], classes: list[int],
                 width: int | None, align_corners: bool):
        super().__init__()
        self.deep, self.mid_skip, self.skip, self.align_corners = deep, mid_skip, skip, align_corners
        stages = []
        for level, (prev, k) in enumerate(zip(classes[:-1], classes[1:]), start=1):
            skip_ch = channels[skip if level == len(classes) - 1 else mid_skip]
            stages.append(Stage(channels[deep] + prev + skip_ch, width or k, k))
        self.stages = nn.ModuleList(stages)

    def forward(self, features: dict[str, Tensor], level0: Tensor) -> list[Tensor]:
        """Raw scores of levels 1 … L−1 at the stages' resolutions, from stage 0's raw scores."""
        ac = self.align_corners
        deep = features[self.deep]
        mid_skip = resize_bilinear(features[self.mid_skip], deep.shape[-2:], ac) if len(self.stages) > 1 else None
        scores, prev = [], level0
        for level, stage in enumerate(self.stages, start=1):
            skip = features[self.skip] if level == len(self.stages) else mid_skip
            size = skip.shape[-2:]
            prev = stage(torch.cat([resize_bilinear(deep, size, ac), resize_bilinear(prev, size, ac), skip], dim=1))
            scores.append(prev)
        return scores

    def apply(self, out: SegOutput) -> SegOutput:
        """The C2F prediction from a network output whose head predicts level 0: ``out.logits``
        becomes the finest level, ``extras["c2f/levels"]`` the coarse ones, all at label size."""
        size = out.logits.shape[-2:]
        finer = [resize_bilinear(s, size, self.align_corners) for s in self(out.features, out.head_logits)]
        levels = [out.logits, *finer]
        out.extras["c2f/levels"] = levels[:-1]
        out.logits = levels[-1]
        return out


class CoarseToFineNet(nn.Module):
    """The exported C2F model: the network (its head predicts level 0), then the stages."""

    def __init__(self, net: SegModel, stages: C2FStages):
        super().__init__()
        self.net = net
        self.stages = stages

    def forward(self, x: Tensor) -> SegOutput:
        return self.stages.apply(self.net(x))


@register_strategy("coarse_to_fine")
class CoarseToFine(Strategy):
    phase = Phase.REPLACE_PREDICTION  # before the other strategies look at the prediction
    Config = C2FConfig

    def __init__(self, cfg: C2FConfig, ctx: StrategyContext):
        super().__init__(cfg, ctx)
        levels = cfg.hierarchy if cfg.hierarchy is not None else [list(level) for level in ctx.hierarchy]
        if not levels:
            raise ConfigError(f"'coarse_to_fine' needs a class hierarchy: set '{KEY}.hierarchy' "
                              "(this dataset defines none)")
        if any(len(level) != ctx.num_classes for level in levels):
            raise ConfigError(f"invalid '{KEY}.hierarchy': each level must map all {ctx.num_classes} classes")
        weights = cfg.level_weights if cfg.level_weights is not None else [1.0] * len(levels)
        if len(weights) != len(levels):
            raise ConfigError(f"invalid '{KEY}.level_weights': give one weight per coarse level ({len(levels)})")
        self.hierarchy, self.weights = levels, weights
        self.classes = [max(level) + 1 for level in levels] + [ctx.num_classes]

    def _feature(self, model: SegModel, name: str | None, default: str, key: str) -> str:
        names = list(model.feature_channels)
        if name is None:
            return default
        if name not in model.feature_channels:
            raise ConfigError(f"invalid '{KEY}.{key}': '{name}' is not a feature of the model; "
                              f"allowed: {', '.join(names)}")
        return name

    def build_modules(self, model: SegModel) -> dict[str, nn.Module]:
        names = list(model.feature_channels)
        stride4 = [n for n in names if model.feature_strides.get(n, 0) >= 4]
        deep = self._feature(model, self.cfg.deep, names[-1], "deep")
        skip = self._feature(model, self.cfg.skip, stride4[0] if stride4 else names[0], "skip")
        before_deep = names[max(0, names.index(deep) - 1)]
        mid_skip = self._feature(model, self.cfg.mid_skip, before_deep, "mid_skip")
        model.decode_head = model.new_head(self.classes[0])  # stage 0: the network's head predicts level 0
        return {"stages": C2FStages(deep, mid_skip, skip, model.feature_channels, self.classes,
                                    self.cfg.stage_channels, model.align_corners)}

    def run_modules(self, modules: nn.ModuleDict, out: SegOutput) -> None:
        modules["stages"].apply(out)

    def terms(self, out: SegOutput, target: Tensor, progress: float) -> dict[str, Tensor]:
        levels = coarse_to_fine_losses(out.extras["c2f/levels"], target, self.hierarchy, self.weights,
                                       self.ctx.ignore_index)
        return {f"c2f/l{i}": t for i, t in enumerate(levels)}

    def export(self, net: SegModel, modules: nn.ModuleDict) -> nn.Module:
        return CoarseToFineNet(net, modules["stages"])

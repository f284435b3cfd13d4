"""A small, fast encoder-decoder for CPU runs (demo, tests, benchmarks).

Encoder: four stages at strides 1, 2, 4, 8 (widths w, 2w, 4w, 8w) with
BatchNorm and ReLU; the stride-8 stage uses dilated convolutions for context.
Decode head: a light fusion of the stride-8 context with the stride-2 skip
(in the spirit of LR-ASPP). It is about a quarter of the network's forward
FLOPs, so an HL branch (a copy of the head) costs about 1.2× CE's training
step here (``benchmarks/strategy_cost.py``). With w=16 and 7 classes it has
about 0.46 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from hardseg.models.base import SegModel
from hardseg.models.resize import resize_bilinear


def norm_layer(channels: int, norm: str = "batch") -> nn.Module:
    """BatchNorm, or GroupNorm (batch-size independent: DDP equals one big batch)."""
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(min(8, channels), channels)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        norm_layer(cout, norm),
        nn.ReLU(inplace=True),
    )


class TinyHead(nn.Module):
    """Fuse deep context (stride 8) with a stride-2 skip, predict at stride 2."""

    def __init__(self, deep_ch: int, skip_ch: int, out_channels: int, mid: int = 32, norm: str = "batch"):
        super().__init__()
        self.context = nn.Sequential(nn.Conv2d(deep_ch, mid, 1, bias=False), norm_layer(mid, norm), nn.ReLU(inplace=True))
        self.fuse = conv_bn_relu(mid + skip_ch, mid, norm=norm)
        self.classifier = nn.Conv2d(mid, out_channels, 1)

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        deep, skip = x["deep"], x["skip"]
        ctx = resize_bilinear(self.context(deep), skip.shape[-2:])
        return self.classifier(self.fuse(torch.cat([ctx, skip], dim=1)))


class TinySeg(SegModel):
    def __init__(self, num_classes: int, width: int = 16, aux: bool = False, norm: str = "batch"):
        super().__init__()
        w, n = width, norm
        self.num_classes = num_classes
        self.stem = nn.Sequential(conv_bn_relu(3, w, norm=n), conv_bn_relu(w, w, norm=n))
        self.stage2 = nn.Sequential(conv_bn_relu(w, 2 * w, stride=2, norm=n), conv_bn_relu(2 * w, 2 * w, norm=n))
        self.stage4 = nn.Sequential(conv_bn_relu(2 * w, 4 * w, stride=2, norm=n), conv_bn_relu(4 * w, 4 * w, norm=n))
        self.stage8 = nn.Sequential(
            conv_bn_relu(4 * w, 8 * w, stride=2, norm=n),
            conv_bn_relu(8 * w, 8 * w, dilation=2, norm=n),
            conv_bn_relu(8 * w, 8 * w, dilation=4, norm=n),
        )
        self.feature_channels = {"stem": w, "stage2": 2 * w, "stage4": 4 * w, "stage8": 8 * w}
        self.feature_strides = {"stem": 1, "stage2": 2, "stage4": 4, "stage8": 8}
        self._norm = norm
        self._head_args = (8 * w, 2 * w)
        self.decode_head = TinyHead(*self._head_args, num_classes, norm=norm)
        self.aux_head = nn.Conv2d(4 * w, num_classes, 1) if aux else None

    def encoder_module(self) -> nn.Module:
        return nn.ModuleDict({"stem": self.stem, "stage2": self.stage2, "stage4": self.stage4, "stage8": self.stage8})

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        f1 = self.stem(x)
        f2 = self.stage2(f1)
        f4 = self.stage4(f2)
        f8 = self.stage8(f4)
        return {"stem": f1, "stage2": f2, "stage4": f4, "stage8": f8}

    def head_input(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"deep": features["stage8"], "skip": features["stage2"]}

    def decode_aux(self, features: dict[str, Tensor]) -> Tensor | None:
        return None if self.aux_head is None else self.aux_head(features["stage4"])

    def new_head(self, out_channels: int) -> nn.Module:
        return TinyHead(*self._head_args, out_channels, norm=self._norm)

"""mmsegmentation's dilated ResNet networks, by mmseg's config names, without mmcv or mmseg.

``pspnet_r50_d8``, ``pspnet_r101_d8``, ``deeplabv3_r50_d8``, ``deeplabv3_r101_d8``,
``deeplabv3plus_r50_d8``, ``deeplabv3plus_r101_d8``, ``fcn_r50_d8``, ``fcn_r101_d8``: the
networks of mmsegmentation 0.22.1's ``configs/_base_/models/{pspnet,deeplabv3,deeplabv3plus,fcn}
_r50-d8.py`` (the ``r101`` configs only set ``depth=101``), written from mmseg's module code:

* backbone: ResNetV1c-50/101 at output stride 8 (:mod:`hardseg.models.resnet_v1c`);
* decode head on ``layer4`` (2048 channels → 512): ``PSPHead`` (pool scales 1, 2, 3, 6, a
  1×1 ConvModule each, 3×3 bottleneck), ``ASPPHead`` (image pool + dilations 1, 12, 24, 36,
  3×3 bottleneck), ``DepthwiseSeparableASPPHead`` (the same with depthwise-separable
  dilated branches, the ``layer1`` skip reduced to 48 channels and two depthwise-separable
  3×3 convolutions), ``FCNHead`` (two 3×3 convolutions, concatenated with the input);
* every head: ``Dropout2d(0.1)`` then ``conv_seg`` (1×1 to the classes);
* ``model.aux``: mmseg's auxiliary ``FCNHead`` on ``layer3`` (1024 → 256, one 3×3
  convolution), whose CE the objective weighs by ``model.aux_weight`` (0.4 in mmseg);
* ``ConvModule`` = convolution without bias + BN + ReLU; BN is ``nn.BatchNorm2d``, which
  ``model.sync_bn`` turns into ``SyncBatchNorm`` (mmseg's ``SyncBN``);
* ``align_corners`` (``model.align_corners``; mmseg's default False, True in its
  ``*_769x769_*`` configs) for every bilinear resize: pyramid/image-pool upsampling, the
  DeepLabV3+ skip, the logits to the input size.

Parameter names are mmseg's checkpoint keys (``backbone.stem.0.weight``,
``decode_head.psp_modules.0.1.conv.weight``, ``auxiliary_head.convs.0.bn.running_mean`` …),
so an mmseg checkpoint loads by identity (:mod:`hardseg.models.mmseg_checkpoint`,
docs/models.md). Initialisation is mmseg's: Kaiming normal (fan_out) for convolutions, BN
1/0, ``conv_seg`` normal with std 0.01 and bias 0.

What the strategies see: features ``stem`` (64 ch, stride 2), ``layer1`` (256, 4),
``layer2`` (512, 8), ``layer3`` (1024, 8), ``layer4`` (2048, 8); ``head_input`` is the
tuple ``(layer1, layer2, layer3, layer4)`` that mmseg's heads take (each picks its
``in_index``), so HL's branch, ``new_head(1)``, is the reference's ``weigh_head``: a full
copy of the decode head with one output channel on the detached backbone outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from hardseg.models.base import SegModel
from hardseg.models.resize import resize_bilinear
from hardseg.models.resnet_v1c import STAGE_CHANNELS, ResNetV1c, init_conv_bn

FEATURES = ("stem", "layer1", "layer2", "layer3", "layer4")
FEATURE_CHANNELS = dict(zip(FEATURES, (64, *STAGE_CHANNELS)))
FEATURE_STRIDES = dict(zip(FEATURES, (2, 4, 8, 8, 8)))


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` with a norm: ``conv`` (no bias), ``bn``, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv's: a depthwise ConvModule (BN, ReLU) then a pointwise 1×1 ConvModule."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, kernel, padding=padding, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class DecodeHead(nn.Module):
    """mmseg's ``BaseDecodeHead``: picks ``inputs[in_index]``, ``Dropout2d`` + ``conv_seg`` at the end."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int,
                 dropout_ratio: float = 0.1, align_corners: bool = False):
        super().__init__()
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.in_index, self.align_corners = in_index, align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def cls_seg(self, feat: Tensor) -> Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return resize_bilinear(x, size, self.align_corners)

    def init_weights(self) -> "DecodeHead":
        """mmseg's initialisation of a head (Kaiming convolutions, BN 1/0, ``conv_seg`` normal std 0.01)."""
        init_conv_bn(self)
        if not self.conv_seg.weight.is_meta:
            nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
            nn.init.zeros_(self.conv_seg.bias)
        return self


class PSPHead(DecodeHead):
    """Pyramid pooling (``psp_modules.i`` = adaptive pool + 1×1 ConvModule), 3×3 ``bottleneck``."""

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kw: Any):
        super().__init__(**kw)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(self.in_channels, self.channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(self.in_channels + len(pool_scales) * self.channels, self.channels, 3, padding=1)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        x = inputs[self.in_index]
        outs = [x] + [self.resize(ppm(x), x.shape[2:]) for ppm in self.psp_modules]
        return self.cls_seg(self.bottleneck(torch.cat(outs, dim=1)))


class ASPPHead(DecodeHead):
    """DeepLabV3's: ``image_pool`` (global pool + 1×1) and ``aspp_modules`` (1×1 for dilation 1, else a
    dilated 3×3, depthwise-separable with ``separable``), concatenated, 3×3 ``bottleneck``."""

    def __init__(self, dilations: Sequence[int] = (1, 12, 24, 36), separable: bool = False, **kw: Any):
        super().__init__(**kw)
        cin, ch = self.in_channels, self.channels
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(cin, ch, 1))
        branch = DepthwiseSeparableConvModule if separable else ConvModule
        self.aspp_modules = nn.ModuleList(
            ConvModule(cin, ch, 1) if d == 1 else branch(cin, ch, 3, padding=d, dilation=d) for d in dilations)
        self.bottleneck = ConvModule((len(dilations) + 1) * ch, ch, 3, padding=1)

    def aspp(self, x: Tensor) -> Tensor:
        outs = [self.resize(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.aspp(inputs[self.in_index]))


class DepthwiseSeparableASPPHead(ASPPHead):
    """DeepLabV3+: separable ASPP, then the ``inputs[0]`` skip (``c1_bottleneck``, 1×1 to
    ``c1_channels``) concatenated with the upsampled ASPP output, two separable 3×3
    convolutions (``sep_bottleneck``)."""

    def __init__(self, c1_in_channels: int = 256, c1_channels: int = 48, **kw: Any):
        super().__init__(separable=True, **kw)
        ch = self.channels
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(DepthwiseSeparableConvModule(ch + c1_channels, ch, 3, padding=1),
                                            DepthwiseSeparableConvModule(ch, ch, 3, padding=1))

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        out = self.aspp(inputs[self.in_index])
        c1 = self.c1_bottleneck(inputs[0])
        out = torch.cat([self.resize(out, c1.shape[2:]), c1], dim=1)
        return self.cls_seg(self.sep_bottleneck(out))


class FCNHead(DecodeHead):
    """``convs`` (``num_convs`` 3×3 ConvModules), optionally ``conv_cat`` over [input, convs' output]."""

    def __init__(self, num_convs: int = 2, concat_input: bool = True, kernel_size: int = 3, **kw: Any):
        super().__init__(**kw)
        pad = kernel_size // 2
        convs = [ConvModule(self.in_channels if i == 0 else self.channels, self.channels, kernel_size, padding=pad)
                 for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size, padding=pad) \
            if concat_input else None

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        x = inputs[self.in_index]
        feats = self.convs(x)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return self.cls_seg(feats)


@dataclass(frozen=True)
class Arch:
    """One of mmseg's ``_base_/models/*_r50-d8.py`` configs: its decode head and options."""

    config: str  # mmseg's config stem, e.g. "pspnet_r50-d8"
    head: type[DecodeHead]
    head_options: tuple[tuple[str, Any], ...]
    head_type: str  # mmseg's type name of the decode head


ARCHS = {
    "pspnet": Arch("pspnet_r50-d8", PSPHead, (("pool_scales", (1, 2, 3, 6)),), "PSPHead"),
    "deeplabv3": Arch("deeplabv3_r50-d8", ASPPHead, (("dilations", (1, 12, 24, 36)),), "ASPPHead"),
    "deeplabv3plus": Arch("deeplabv3plus_r50-d8", DepthwiseSeparableASPPHead,
                          (("dilations", (1, 12, 24, 36)), ("c1_in_channels", 256), ("c1_channels", 48)),
                          "DepthwiseSeparableASPPHead"),
    "fcn": Arch("fcn_r50-d8", FCNHead, (("num_convs", 2), ("concat_input", True)), "FCNHead"),
}
DEPTHS = (50, 101)
MODEL_NAMES = tuple(f"{arch}_r{depth}_d8" for arch in ARCHS for depth in DEPTHS)
HEAD_CHANNELS = 512
AUX_OPTIONS = {"in_channels": 1024, "channels": 256, "in_index": 2, "num_convs": 1, "concat_input": False}


def parse_name(name: str) -> tuple[str, int]:
    """``"deeplabv3plus_r101_d8"`` → ``("deeplabv3plus", 101)``."""
    arch, depth, _ = name.rsplit("_", 2)
    return arch, int(depth[1:])


class MmsegSeg(SegModel):
    """ResNetV1c + an mmseg decode head (+ the FCN aux head), parameters named as mmseg's checkpoints."""

    def __init__(self, arch: str, depth: int, num_classes: int, aux: bool = False, align_corners: bool = False):
        super().__init__()
        self.arch, self.depth, self.num_classes, self.align_corners = arch, depth, num_classes, align_corners
        self.mmseg_config = ARCHS[arch].config.replace("r50", f"r{depth}")
        self.feature_channels, self.feature_strides = dict(FEATURE_CHANNELS), dict(FEATURE_STRIDES)
        self.backbone = ResNetV1c(depth)
        self.decode_head = self.new_head(num_classes)
        self.auxiliary_head = FCNHead(num_classes=num_classes, align_corners=align_corners,
                                      **AUX_OPTIONS).init_weights() if aux else None

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(FEATURES, self.backbone(x)))

    def head_input(self, features: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return tuple(features[name] for name in FEATURES[1:])

    def decode_aux(self, features: dict[str, Tensor]) -> Tensor | None:
        return None if self.auxiliary_head is None else self.auxiliary_head(self.head_input(features))

    def new_head(self, out_channels: int) -> DecodeHead:
        spec = ARCHS[self.arch]
        return spec.head(in_channels=STAGE_CHANNELS[-1], channels=HEAD_CHANNELS, num_classes=out_channels,
                         in_index=3, align_corners=self.align_corners, **dict(spec.head_options)).init_weights()


def builder(name: str) -> Callable[..., MmsegSeg]:
    """The registry's builder of model ``name`` (one of :data:`MODEL_NAMES`)."""
    arch, depth = parse_name(name)

    def build(num_classes: int, aux: bool = False, align_corners: bool = False, **_: Any) -> MmsegSeg:
        return MmsegSeg(arch, depth, num_classes, aux=aux, align_corners=align_corners)

    build.__name__ = name
    build.__doc__ = f"mmsegmentation's {ARCHS[arch].config.replace('r50', f'r{depth}')} ({ARCHS[arch].head_type})"
    return build

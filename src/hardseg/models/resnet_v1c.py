"""ResNetV1c, the backbone of mmsegmentation's ``*_r50-d8`` / ``*_r101-d8`` configs.

Written from mmsegmentation 0.22.1's ``ResNetV1c`` (``mmseg/models/backbones/resnet.py``,
``mmseg/models/utils/res_layer.py``) as its configs build it, without mmcv:

* deep stem: three 3×3 convolutions 3→32 (stride 2) → 32 → 64, each with BN and ReLU
  (``stem.0``/``1``/``2``, ``stem.3``/``4``/``5``, ``stem.6``/``7``/``8``), then a 3×3 max pool
  of stride 2;
* four stages of bottlenecks (3, 4, 6, 3 blocks for depth 50; 3, 4, 23, 3 for 101), "pytorch"
  style (the stride is on the 3×3 convolution), downsampling by a strided 1×1 convolution + BN;
* ``strides=(1, 2, 1, 1)`` and ``dilations=(1, 1, 2, 4)``: output stride 8; with
  ``contract_dilation`` the first block of a dilated stage uses half the stage's dilation.

Parameter names are mmseg's (``stem.0.weight``, ``layer1.0.conv1.weight``, ``layer1.0.bn1.*``,
``layer1.0.downsample.{0,1}.*``), so open-mmlab's ImageNet files (``resnet50_v1c``,
``resnet101_v1c``) and mmseg checkpoints' ``backbone.*`` load without renaming.
Initialisation without pretrained weights is mmseg's: Kaiming normal (fan_out, ReLU) for the
convolutions, BN weight 1 and bias 0, and the last BN of every block zeroed
(``zero_init_residual``).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EXPANSION = 4
STAGE_CHANNELS = (256, 512, 1024, 2048)  # each stage's output channels (planes × 4)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride, dilation) → 1×1 ×4, BN after each, identity or downsample shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def res_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int,
              contract_dilation: bool) -> nn.Sequential:
    """One stage: mmseg's ``ResLayer`` (first block strided, maybe at half the dilation)."""
    downsample = None
    if stride != 1 or inplanes != planes * EXPANSION:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * EXPANSION))
    first = dilation // 2 if dilation > 1 and contract_dilation else dilation
    layers = [Bottleneck(inplanes, planes, stride, first, downsample)]
    layers += [Bottleneck(planes * EXPANSION, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """ResNetV1c-``depth``; :meth:`forward` returns the stem's output (stride 2, before the max
    pool) and the four stages' outputs."""

    def __init__(self, depth: int = 50, strides: tuple[int, ...] = (1, 2, 1, 1),
                 dilations: tuple[int, ...] = (1, 1, 2, 4), contract_dilation: bool = True,
                 stem_channels: int = 64):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNetV1c depth {depth}: allowed {sorted(DEPTHS)}")
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        for i, blocks in enumerate(DEPTHS[depth]):
            planes = 64 * 2 ** i
            self.add_module(f"layer{i + 1}", res_layer(inplanes, planes, blocks, strides[i], dilations[i],
                                                       contract_dilation))
            inplanes = planes * EXPANSION
        init_resnet(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        stem = self.stem(x)
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return stem, c1, c2, c3, self.layer4(c3)


def init_conv_bn(module: nn.Module) -> None:
    """mmcv's ``kaiming_init`` (normal, fan_out, ReLU, bias 0) for every convolution and
    ``constant_init(1, bias=0)`` for every BN under ``module``; nothing on the meta device (no values)."""
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_resnet(net: ResNetV1c) -> None:
    """mmseg's initialisation without pretrained weights (``zero_init_residual=True``)."""
    init_conv_bn(net)
    for m in net.modules() if not net.stem[0].weight.is_meta else ():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)

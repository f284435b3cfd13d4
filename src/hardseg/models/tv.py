"""torchvision segmentation networks behind the :class:`SegModel` interface.

The torchvision builders are called with ``weights=None`` and
``weights_backbone=None``: nothing is downloaded. The backbone (an
``IntermediateLayerGetter``) is run child by child so every stage's output is
exposed as a named feature, shallow → deep; the decode head and aux head are
torchvision's own modules, and :meth:`new_head` rebuilds the head's class with
another number of output channels.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from torch import Tensor

from hardseg.models.base import SegModel

# torchvision is imported by the builders: importing it costs seconds (its model zoo), and the model
# registry, which config validation and every strategy import, must not (issue 26).


class TorchvisionSeg(SegModel):
    """Wraps a torchvision FCN / DeepLabV3 / LR-ASPP model.

    Args:
        net: the torchvision model.
        keep: backbone child names whose outputs become named features
            (shallow → deep), mapped to the feature name.
        head_keys: how torchvision's backbone output names ("out", "aux",
            "low", "high") map to feature names.
        make_head: builds the decode-head class with ``k`` output channels.
    """

    def __init__(self, net: nn.Module, num_classes: int, keep: dict[str, str], head_keys: dict[str, str],
                 make_head: Callable[[int], nn.Module], feature_channels: dict[str, int],
                 feature_strides: dict[str, int]):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = net.backbone
        self.decode_head = net.classifier
        self.aux_head = getattr(net, "aux_classifier", None)
        self._keep = keep
        self._head_keys = head_keys
        self._make_head = make_head
        self.feature_channels = feature_channels
        self.feature_strides = feature_strides

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        feats: dict[str, Tensor] = {}
        for name, module in self.backbone.items():
            x = module(x)
            if name in self._keep:
                feats[self._keep[name]] = x
        return feats

    def head_input(self, features: dict[str, Tensor]) -> Any:
        if "out" in self._head_keys:
            return features[self._head_keys["out"]]
        return {k: features[v] for k, v in self._head_keys.items() if k != "aux"}

    def decode_aux(self, features: dict[str, Tensor]) -> Tensor | None:
        if self.aux_head is None:
            return None
        return self.aux_head(features[self._head_keys["aux"]])

    def new_head(self, out_channels: int) -> nn.Module:
        return self._make_head(out_channels)


class _LRASPPHeadAdapter(nn.Module):
    """LRASPPHead takes a dict with "low" and "high"; keep that calling convention."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return self.head(x)


def _resnet50(builder: Callable, head_cls: Callable, num_classes: int, aux: bool) -> TorchvisionSeg:
    net = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux)
    # IntermediateLayerGetter keeps children up to the last returned layer.
    keep = {"relu": "stem", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}
    channels = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    strides = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}  # layer3/4 dilated
    return TorchvisionSeg(net, num_classes, keep, {"out": "layer4", "aux": "layer3"},
                          lambda k: head_cls(2048, k), channels, strides)


def fcn_resnet50(num_classes: int, aux: bool = False, **_: Any) -> TorchvisionSeg:
    # local: torchvision's model zoo costs seconds to import (see above)
    from torchvision.models import segmentation as tvseg
    from torchvision.models.segmentation.fcn import FCNHead

    return _resnet50(tvseg.fcn_resnet50, FCNHead, num_classes, aux)


def deeplabv3_resnet50(num_classes: int, aux: bool = False, **_: Any) -> TorchvisionSeg:
    # local: torchvision's model zoo costs seconds to import (see above)
    from torchvision.models import segmentation as tvseg
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return _resnet50(tvseg.deeplabv3_resnet50, DeepLabHead, num_classes, aux)


def _mobilenet_keep(backbone: nn.Module) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
    """Name the last block of each stride of MobileNetV3-Large's features (channels, strides)."""
    keep, channels, strides_of = {}, {}, {}
    names = list(backbone.keys())
    strides = {"1": "s2", "3": "s4", "6": "s8", "12": "s16", names[-1]: "s16_out"}
    out_ch = {"1": 16, "3": 24, "6": 40, "12": 112, names[-1]: 960}
    for child, feat in strides.items():
        if child in backbone:
            keep[child] = feat
            channels[feat] = out_ch[child]
            strides_of[feat] = int(feat[1:].split("_")[0])
    return keep, channels, strides_of


def deeplabv3_mobilenet_v3_large(num_classes: int, aux: bool = False, **_: Any) -> TorchvisionSeg:
    # local: torchvision's model zoo costs seconds to import (see above)
    from torchvision.models import segmentation as tvseg
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    net = tvseg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux)
    keep, channels, strides = _mobilenet_keep(net.backbone)
    return TorchvisionSeg(net, num_classes, keep, {"out": "s16_out", "aux": "s8"},
                          lambda k: DeepLabHead(960, k), channels, strides)


def lraspp_mobilenet_v3_large(num_classes: int, aux: bool = False, **_: Any) -> TorchvisionSeg:
    # local: torchvision's model zoo costs seconds to import (see above)
    from torchvision.models import segmentation as tvseg
    from torchvision.models.segmentation.lraspp import LRASPPHead

    net = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    keep, channels, strides = _mobilenet_keep(net.backbone)
    model = TorchvisionSeg(net, num_classes, keep, {"low": "s8", "high": "s16_out"},
                           lambda k: _LRASPPHeadAdapter(LRASPPHead(40, 960, k, 128)), channels, strides)
    model.decode_head = _LRASPPHeadAdapter(net.classifier)
    return model

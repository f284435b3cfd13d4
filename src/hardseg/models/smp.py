"""segmentation-models-pytorch architectures behind the :class:`SegModel` interface.

``model.name: smp:<Architecture>`` with ``model.encoder: <encoder>`` builds
``segmentation_models_pytorch.create_model(<Architecture>, encoder_name=<encoder>,
encoder_weights=None)``: smp downloads nothing (pretrained weights are loaded
afterwards, from the caches or fetched by :mod:`hardseg.models.pretrained`). Encoders are smp's own
(``resnet18``, ``resnet50``, ``mobilenet_v2``, ``mit_b0`` …) or any timm model
as ``tu-<timm name>``.

segmentation-models-pytorch and timm are imported inside the functions that
use them (``# local:``): importing them adds 0.3-1.2 s (``python -X importtime``
after ``import hardseg.config``), which a run of a torchvision model or
``tiny_seg`` and every ``hardseg`` command that validates a config would pay.

What the strategies see (docs/models.md):

* features: the encoder's outputs after the input itself, named ``stage1`` …
  ``stage<depth>`` (shallow → deep), with strides 2, 4, … capped at the
  encoder's output stride (dilated DeepLab encoders repeat 8 or 16); an
  empty stage (``mit_*``'s stride-2 placeholder) is left out;
* ``head_input``: the encoder's whole output list, as smp's decoder takes it;
* ``decode_head``: smp's decoder followed by the segmentation head's
  convolution; its logits stay at the decoder's resolution (``head_logits``)
  and are upsampled bilinearly with ``align_corners=True`` as smp's
  ``SegmentationHead`` does;
* ``new_head(k)``: a copy of the decoder re-initialised with smp's decoder
  initialisation, plus a fresh convolution to ``k`` channels;
* PSPNet runs its pyramid pooling on the whole encoder dilated to stride 8
  (the paper's ResNet; smp's default stops at stride 8 without the last two
  stages);
* aux head (``model.aux``): an FCN head (conv3×3, BN, ReLU, dropout, conv1×1)
  on the feature before the deepest, as mmsegmentation's configs of
  DeepLabV3, DeepLabV3+, PSPNet and UPerNet have; the other architectures
  have none and ignore ``model.aux``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from hardseg.errors import ConfigError, one_line
from hardseg.models.base import SegModel
from hardseg.models.output import SegOutput

# model.name suffix -> smp class name; every one builds at 32-64 px on CPU and on the meta device.
ARCHITECTURES = ("DeepLabV3", "DeepLabV3Plus", "FPN", "Linknet", "MAnet", "PSPNet", "Segformer", "Unet",
                 "UnetPlusPlus", "UPerNet")
WITH_AUX = ("DeepLabV3", "DeepLabV3Plus", "PSPNet", "UPerNet")  # mmsegmentation configs with an FCN aux head
DEFAULT_ENCODER = {"Segformer": "mit_b0"}  # every other architecture: resnet50
FALLBACK_ENCODER = "resnet50"


def default_encoder(arch: str) -> str:
    return DEFAULT_ENCODER.get(arch, FALLBACK_ENCODER)


def check_encoder(encoder: str) -> None:
    """ConfigError unless ``encoder`` is an smp encoder or ``tu-<timm model>``."""
    import segmentation_models_pytorch as smp  # local: smp+timm add 0.3-1.2 s; smp:* models only
    import timm  # local: timm adds 0.4-0.9 s; tu-* encoders only

    if encoder.startswith("tu-"):
        name = encoder[3:].split(".")[0]
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm encoder '{name}' in 'model.encoder: {encoder}'; "
                              "use a name from timm.list_models(), e.g. tu-resnet18, tu-convnext_tiny")
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        some = ", ".join(n for n in ("resnet18", "resnet50", "resnet101", "mobilenet_v2", "efficientnet-b0",
                                     "mit_b0", "mit_b2") if n in names)
        raise ConfigError(f"unknown encoder '{encoder}' for 'model.encoder'; allowed: smp's encoders ({some}, … "
                          f"{len(names)} in all) or tu-<timm model name>")


class SmpHead(nn.Module):
    """smp's decoder, then a convolution to the classes (no upsampling, no activation)."""

    def __init__(self, decoder: nn.Module, classifier: nn.Conv2d):
        super().__init__()
        self.decoder = decoder
        self.classifier = classifier

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.classifier(self.decoder(features))


def _fcn_aux(cin: int, num_classes: int) -> nn.Sequential:
    mid = max(cin // 4, 16)
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Dropout(0.1), nn.Conv2d(mid, num_classes, 1))


class SmpSeg(SegModel):
    """An smp ``SegmentationModel`` split into encoder, decode head and an optional FCN aux head."""

    align_corners = True  # smp's SegmentationHead upsamples with nn.Upsample(align_corners=True)

    def __init__(self, net: nn.Module, arch: str, encoder: str, num_classes: int, aux: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.arch, self.encoder_name = arch, encoder
        self.encoder = net.encoder
        conv = net.segmentation_head[0]
        self.decode_head = SmpHead(net.decoder, conv)
        out_stride = int(getattr(self.encoder, "output_stride", 32))
        channels = list(self.encoder.out_channels)
        self._feature_index: dict[str, int] = {}
        self.feature_channels, self.feature_strides = {}, {}
        for i, ch in enumerate(channels[1:], start=1):
            if ch == 0:
                continue
            name = f"stage{i}"
            self._feature_index[name] = i
            self.feature_channels[name] = ch
            self.feature_strides[name] = min(2 ** i, out_stride)
        self._aux_feature = list(self.feature_channels)[-2] if aux and arch in WITH_AUX else None
        self.aux_head = _fcn_aux(self.feature_channels[self._aux_feature], num_classes) \
            if self._aux_feature else None

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        return self._named(self.encoder(x))

    def _named(self, encoded: list[Tensor]) -> dict[str, Tensor]:
        return {name: encoded[i] for name, i in self._feature_index.items()}

    def forward(self, x: Tensor) -> SegOutput:
        """As :meth:`SegModel.forward`, with the encoder's whole output list as the head input."""
        size = x.shape[-2:]
        encoded = list(self.encoder(x))
        feats = self._named(encoded)
        head_logits = self.decode(encoded)
        aux = self.decode_aux(feats)
        return SegOutput(logits=self.upsample(head_logits, size), aux=None if aux is None else self.upsample(aux, size),
                         features=feats, head_input=encoded, head_logits=head_logits)

    def decode_aux(self, features: dict[str, Tensor]) -> Tensor | None:
        return None if self.aux_head is None else self.aux_head(features[self._aux_feature])

    def new_head(self, out_channels: int) -> nn.Module:
        from segmentation_models_pytorch.base import initialization  # local: smp+timm add 0.3-1.2 s; smp:* models only

        decoder = copy.deepcopy(self.decode_head.decoder)
        for m in decoder.modules():  # every layer afresh (ConvTranspose too), then smp's decoder init on top
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        initialization.initialize_decoder(decoder)
        conv = self.decode_head.classifier
        classifier = nn.Conv2d(conv.in_channels, out_channels, conv.kernel_size, padding=conv.padding,
                               device=conv.weight.device)
        initialization.initialize_head(classifier)
        return SmpHead(decoder, classifier)


def build_smp(arch: str, num_classes: int, aux: bool = False, encoder: str | None = None, **_: Any) -> SmpSeg:
    """``smp:<arch>`` with ``encoder`` (None: :func:`default_encoder`), fresh weights."""
    import segmentation_models_pytorch as smp  # local: smp+timm add 0.3-1.2 s; smp:* models only

    encoder = encoder or default_encoder(arch)
    check_encoder(encoder)
    kwargs: dict[str, Any] = {"encoder_name": encoder, "encoder_weights": None, "classes": num_classes}
    if arch == "PSPNet":  # smp's default (depth 3) leaves layer3/4 unused (DDP); PSPNet as in its paper: all stages
        kwargs["encoder_depth"] = 5
    try:
        net = smp.create_model(arch, **kwargs)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"'model.name: smp:{arch}' does not take 'model.encoder: {encoder}': "
                          f"{one_line(err, typed=False)}") from None
    except RuntimeError as err:
        if "meta" not in str(err):
            raise
        # mit_* encoders call .item() while building (drop-path rates): build on CPU, then move.
        with torch.device("cpu"):
            net = smp.create_model(arch, **kwargs)
        net = net.to("meta")
    if arch == "PSPNet":
        net.encoder = _dilated_encoder(net.encoder, encoder, 8)
    return SmpSeg(net, arch, encoder, num_classes, aux=aux)


def _dilated_encoder(built: nn.Module, encoder: str, output_stride: int) -> nn.Module:
    """``encoder`` rebuilt at ``output_stride`` (dilated last stages, as PSPNet's paper), where it supports it."""
    from segmentation_models_pytorch.encoders import get_encoder  # local: smp+timm add 0.3-1.2 s; smp:* models only

    try:
        with torch.device(next(built.parameters()).device):
            return get_encoder(encoder, depth=5, weights=None, output_stride=output_stride)
    except Exception:  # noqa: BLE001 - e.g. mit_* encoders cannot be dilated: keep stride 32
        return built

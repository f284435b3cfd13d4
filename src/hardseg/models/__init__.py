"""Segmentation networks and their registry.

``@register_model("name")`` adds a builder ``fn(num_classes, aux=False, width=...)
-> SegModel``; :func:`build_model` looks it up. Every model returns a
:class:`SegOutput` (main logits, optional aux logits, named features).
"""

from __future__ import annotations

from typing import Callable

from hardseg.errors import ConfigError
from hardseg.models.base import SegModel
from hardseg.models.output import SegOutput, predict_classes
from hardseg.models.resize import resize_bilinear
from hardseg.models import tiny, tv

_MODELS: dict[str, Callable[..., SegModel]] = {}


def register_model(name: str) -> Callable[[Callable[..., SegModel]], Callable[..., SegModel]]:
    def deco(fn: Callable[..., SegModel]) -> Callable[..., SegModel]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        _MODELS[name] = fn
        return fn
    return deco


def available_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, *, aux: bool = False, width: int = 16, norm: str = "batch") -> SegModel:
    """Build a registered model with fresh weights (nothing is downloaded).

    ``width`` and ``norm`` apply to ``tiny_seg``; torchvision models ignore them.
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model '{name}'; allowed: {', '.join(available_models())}")
    return _MODELS[name](num_classes, aux=aux, width=width, norm=norm)


@register_model("tiny_seg")
def tiny_seg(num_classes: int, aux: bool = False, width: int = 16, norm: str = "batch", **_: object) -> SegModel:
    return tiny.TinySeg(num_classes, width=width, aux=aux, norm=norm)



register_model("fcn_resnet50")(tv.fcn_resnet50)
register_model("deeplabv3_resnet50")(tv.deeplabv3_resnet50)
register_model("deeplabv3_mobilenet_v3_large")(tv.deeplabv3_mobilenet_v3_large)
register_model("lraspp_mobilenet_v3_large")(tv.lraspp_mobilenet_v3_large)

__all__ = ["SegModel", "SegOutput", "available_models", "predict_classes", "build_model", "register_model",
           "resize_bilinear"]

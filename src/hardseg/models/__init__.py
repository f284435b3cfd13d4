"""Segmentation networks and their registry.

``@register_model("name")`` adds a builder ``fn(num_classes, aux=False, **options)
-> SegModel``; :func:`build_model` looks it up. Every model returns a
:class:`SegOutput` (main logits, optional aux logits, named features).

Built in: ``tiny_seg`` (CPU tests and demos), four torchvision models, the
segmentation-models-pytorch zoo as ``smp:<Architecture>`` (``model.encoder``
picks the encoder, :mod:`hardseg.models.smp`), and mmsegmentation's dilated
ResNet networks by its config names (``pspnet_r50_d8``, ``deeplabv3plus_r101_d8``
…, :mod:`hardseg.models.mmseg`; ``model.align_corners`` applies to them). A third-party package adds a
model by declaring an entry point in the ``hardseg.models`` group whose object
builds a :class:`SegModel` (a builder function or the SegModel subclass
itself), called as ``obj(num_classes, aux=..., width=..., norm=...)`` plus
``encoder=...`` when ``model.encoder`` is set::

    [project.entry-points."hardseg.models"]
    my_net = "my_pkg.net:MyNet"

Entry points are read in every process that builds a model (the driver and
each Ray worker). A plugin that fails to import does not break the built-ins:
naming it raises a one-line ConfigError that says why (docs/models.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from hardseg.errors import ConfigError
from hardseg.plugins import Registry
from hardseg.models.base import SegModel
from hardseg.models.output import SegOutput, predict_classes
from hardseg.models.resize import resize_bilinear
from hardseg.models import mmseg, smp, tiny, tv

ENTRY_POINT_GROUP = "hardseg.models"
MODELS: Registry[Callable[..., SegModel]] = Registry(
    ENTRY_POINT_GROUP, "model", error=ConfigError, accept=callable, expected="a SegModel class or builder")
_BUILTIN: set[str] = set()


def register_model(name: str) -> Callable[[Callable[..., SegModel]], Callable[..., SegModel]]:
    def deco(fn: Callable[..., SegModel]) -> Callable[..., SegModel]:
        return MODELS.add(name, fn)
    return deco


def available_models() -> list[str]:
    return MODELS.names()


def check_model_name(name: str, source: str = "config") -> None:
    """ConfigError (one line) for an unknown model or a plugin that failed to load."""
    if problem := MODELS.problem(name):
        raise ConfigError(f"{source}: {problem} (in 'model.name')")


def build_model(name: str, num_classes: int, *, aux: bool = False, width: int = 16, norm: str = "batch",
                encoder: str | None = None, align_corners: bool | None = None) -> SegModel:
    """Build a registered model with fresh weights (nothing is downloaded).

    ``width`` and ``norm`` apply to ``tiny_seg``, ``encoder`` to ``smp:*``
    models (and plugins that take it); torchvision models have fixed backbones.
    ``align_corners`` (None: the model's own) applies to the mmseg networks
    (and plugins that take it).
    """
    builder = MODELS.get(name)
    options: dict[str, Any] = {"aux": aux, "width": width, "norm": norm}
    if encoder is not None:
        if name in _BUILTIN and not name.startswith("smp:"):
            raise ConfigError(f"'model.encoder' applies to smp:* models; '{name}' has a fixed backbone "
                              "(unset model.encoder)")
        options["encoder"] = encoder
    if align_corners is not None:
        if name in _BUILTIN and name not in mmseg.MODEL_NAMES:
            raise ConfigError(f"'model.align_corners' applies to the mmseg networks ({mmseg.MODEL_NAMES[0]}, …); "
                              f"'{name}' resizes as its own code does (unset model.align_corners)")
        options["align_corners"] = align_corners
    model = builder(num_classes, **options)
    if not isinstance(model, SegModel):
        raise ConfigError(f"model '{name}' built a {type(model).__name__}, not a hardseg SegModel "
                          "(see the SegModel contract in docs/models.md)")
    return model


@register_model("tiny_seg")
def tiny_seg(num_classes: int, aux: bool = False, width: int = 16, norm: str = "batch", **_: object) -> SegModel:
    return tiny.TinySeg(num_classes, width=width, aux=aux, norm=norm)


register_model("fcn_resnet50")(tv.fcn_resnet50)
register_model("deeplabv3_resnet50")(tv.deeplabv3_resnet50)
register_model("deeplabv3_mobilenet_v3_large")(tv.deeplabv3_mobilenet_v3_large)
register_model("lraspp_mobilenet_v3_large")(tv.lraspp_mobilenet_v3_large)
for _arch in smp.ARCHITECTURES:
    register_model(f"smp:{_arch}")(partial(smp.build_smp, _arch))
for _name in mmseg.MODEL_NAMES:
    register_model(_name)(mmseg.builder(_name))
_BUILTIN.update(MODELS.items)

__all__ = ["SegModel", "SegOutput", "available_models", "check_model_name", "predict_classes", "build_model",
           "register_model", "resize_bilinear", "ENTRY_POINT_GROUP"]

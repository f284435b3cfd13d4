"""mmsegmentation checkpoints in (``model.init_from``) and out (``hardseg export --format mmseg``).

An mmseg checkpoint is ``{"meta": {...}, "state_dict": {...}, "optimizer": {...}}`` whose
state dict holds ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*`` and, in the HL
reference code, ``weigh_head.*`` (the hardness branch, a decode head with one output).
The networks of :mod:`hardseg.models.mmseg` name their parameters as mmseg does, so the
mapping is the identity, with one exception: ``weigh_head.<k>`` is HL's branch,
``strategy_modules.hl.branch.head.<k>`` of the training model (:data:`HL_BRANCH`).

Loading checks, on the driver before any MLflow run (the model on the meta device):

* the backbone and decode head must have the file's structure key for key (else: "an mmseg
  checkpoint of another network", naming both structures and the first differing key);
* a shape mismatch names the first key and both shapes; a different class count
  (``decode_head.conv_seg`` / ``auxiliary_head.conv_seg``) is refused with the fine-tuning
  recipe, ``model.init_skip: [decode_head.conv_seg, auxiliary_head.conv_seg]``;
* every tensor is consumed or reported: the aux head or ``weigh_head`` of a file whose run has
  none count as unexpected, the run's aux head absent from the file as missing, the layers
  named by ``model.init_skip`` as skipped (they keep their fresh initialisation).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from hardseg.errors import ConfigError
from hardseg.models.mmseg import ARCHS, MODEL_NAMES, MmsegSeg

PARTS = ("backbone", "decode_head", "auxiliary_head", "weigh_head")
HL_BRANCH = "strategy_modules.hl.branch.head"  # TrainingModel's HL branch = mmseg's weigh_head
CLASS_LAYERS = ("decode_head.conv_seg", "auxiliary_head.conv_seg")
SKIP_HINT = "model.init_skip: [decode_head.conv_seg, auxiliary_head.conv_seg]"
KEY = "model.init_from"


class Loaded(NamedTuple):
    """What an mmseg state dict gave: tensors loaded, the model's missing ones, the file's unexpected and
    skipped ones (``model.init_skip``)."""

    loaded: int
    missing: list[str]
    unexpected: list[str]
    skipped: list[str]


def is_mmseg_layout(state: dict[str, Tensor]) -> bool:
    """Keys under mmseg's top-level parts only, with ResNetV1c's deep stem (``backbone.stem.0``)."""
    return "backbone.stem.0.weight" in state and all(k.split(".", 1)[0] in PARTS for k in state)


def is_skipped(key: str, skip: list[str]) -> bool:
    """``key`` is a layer named in ``skip`` or one of its tensors."""
    return any(key == p or key.startswith(p + ".") for p in skip)


def check_skip(skip: list[str], names: list[str], model_name: str) -> None:
    """Every ``model.init_skip`` entry must name a layer (or tensor) of the model."""
    for p in skip:
        if not any(is_skipped(n, [p]) for n in names):
            raise ConfigError(f"model.init_skip: '{p}' names no layer of model '{model_name}' "
                              f"(e.g. {', '.join(CLASS_LAYERS)}; keys as in its state dict)")


def hl_head(training: nn.Module | None) -> nn.Module | None:
    """HL's branch head in a TrainingModel, or None (no HL in the run)."""
    if training is None:
        return None
    try:
        return training.get_submodule(HL_BRANCH)
    except AttributeError:
        return None


def structure(keys: set[str], part: str) -> str:
    """A short description of one part's layout: blocks per stage for the backbone, modules for a head."""
    rest = [k[len(part) + 1:] for k in keys]
    if part == "backbone":
        blocks = Counter(r.split(".")[0] for r in rest if r.startswith("layer") and r.endswith(".conv1.weight"))
        return "ResNet stages of " + "/".join(str(blocks[f"layer{i}"]) for i in range(1, 5)) + " blocks"
    mods = sorted({r.split(".")[0] for r in rest})
    return "modules " + ", ".join(mods)


def _target(net: nn.Module, head: nn.Module | None) -> dict[str, Tensor]:
    own = dict(net.state_dict())
    if head is not None:
        own.update({f"weigh_head.{k}": v for k, v in head.state_dict().items()})
    return own


def _check_structure(file_keys: set[str], own_keys: set[str], source: str, model_name: str, net: MmsegSeg) -> None:
    for part in PARTS:
        fk = {k for k in file_keys if k.startswith(part + ".")}
        mk = {k for k in own_keys if k.startswith(part + ".")}
        if part not in ("backbone", "decode_head") and not (fk and mk):
            continue  # an aux head or weigh_head on one side only: reported, not an error
        if fk != mk:
            first = sorted(fk ^ mk)[0]
            where = "the file" if first in fk else "the model"
            raise ConfigError(f"{KEY}: {source} is an mmseg checkpoint of another network: its {part} has "
                              f"{structure(fk, part)}, model '{model_name}' ({net.mmseg_config}) has "
                              f"{structure(mk, part)} (first key only in {where}: '{first}')")


def _check_shapes(file: dict[str, Tensor], own: dict[str, Tensor], source: str) -> None:
    bad = [k for k in own if k in file and tuple(file[k].shape) != tuple(own[k].shape)]
    if not bad:
        return
    k = bad[0]
    fs, ms = tuple(file[k].shape), tuple(own[k].shape)
    if is_skipped(k, list(CLASS_LAYERS)) and fs[1:] == ms[1:]:
        raise ConfigError(f"{KEY}: {source} predicts {fs[0]} classes and the model {ms[0]} ('{k}': {fs} in the "
                          f"file, {ms} in the model); to fine-tune on this dataset set {SKIP_HINT} "
                          "(those layers then start fresh)")
    raise ConfigError(f"{KEY}: shape mismatch at '{k}' of {source}: {fs} in the file, {ms} in the model "
                      f"({len(bad)} keys differ)")


def load_mmseg(net: nn.Module, state: dict[str, Tensor], source: str, model_name: str, skip: list[str],
               load: bool = True, training: nn.Module | None = None) -> Loaded:
    """Check an mmseg state dict against ``net`` (and HL's branch in ``training``) and (``load``) copy it in."""
    if not isinstance(net, MmsegSeg):
        raise ConfigError(f"{KEY}: {source} is an mmsegmentation checkpoint (backbone.*, decode_head.*); it loads "
                          f"into the mmseg networks ({', '.join(MODEL_NAMES)}), not '{model_name}'")
    head = hl_head(training)
    own = _target(net, head)
    check_skip(skip, list(own), model_name)
    file = {k: v for k, v in state.items() if not is_skipped(k, skip)}
    own_kept = {k: v for k, v in own.items() if not is_skipped(k, skip)}
    _check_structure(set(file), set(own_kept), source, model_name, net)
    _check_shapes(file, own_kept, source)
    report = Loaded(sum(k in own_kept for k in file), [k for k in own_kept if k not in file],
                    [k for k in file if k not in own], [k for k in state if is_skipped(k, skip)])
    if load:
        with torch.no_grad():
            net.load_state_dict({k: v for k, v in file.items() if k in own_kept and not k.startswith("weigh_head.")},
                                strict=False)
            if head is not None:
                head.load_state_dict({k[len("weigh_head."):]: v for k, v in file.items()
                                      if k.startswith("weigh_head.") and k in own_kept}, strict=False)
    return report


# -- out ------------------------------------------------------------------------------------------------------
def mmseg_config_text(net: MmsegSeg) -> str:
    """An mmseg 0.22.1 config for this network, relative to mmseg's ``configs/<arch>/`` folder."""
    arch = ARCHS[net.arch]
    aux = (f"dict(num_classes={net.num_classes}, align_corners={net.align_corners})"
           if net.auxiliary_head is not None else "None")
    return (f"_base_ = ['../_base_/models/{arch.config}.py']\n"
            f"model = dict(\n    pretrained=None,\n    backbone=dict(depth={net.depth}),\n"
            f"    decode_head=dict(num_classes={net.num_classes}, align_corners={net.align_corners}),\n"
            f"    auxiliary_head={aux})\n")


def to_mmseg_checkpoint(net: nn.Module, meta: dict[str, Any], model_name: str,
                        hl: nn.Module | None = None) -> dict[str, Any]:
    """``{"meta", "state_dict"}`` as mmseg saves it: the network's tensors under their own (mmseg's)
    names, HL's branch (if given) as ``weigh_head.*``; ``meta`` carries ``CLASSES``/``PALETTE``
    (read by mmseg's test tool), ``config`` (:func:`mmseg_config_text`) and ``hardseg``'s record."""
    if not isinstance(net, MmsegSeg):
        raise ConfigError(f"--format mmseg: model '{model_name}' is not one of the mmseg networks "
                          f"({', '.join(MODEL_NAMES)}); export it in hardseg's format instead")
    state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    if hl is not None:
        state.update({f"weigh_head.{k}": v.detach().to("cpu").clone() for k, v in hl.state_dict().items()})
    meta = {"config": mmseg_config_text(net), **meta}
    return {"meta": meta, "state_dict": state}


__all__ = ["CLASS_LAYERS", "Loaded", "HL_BRANCH", "SKIP_HINT", "check_skip", "is_mmseg_layout", "is_skipped",
           "load_mmseg", "mmseg_config_text", "to_mmseg_checkpoint"]

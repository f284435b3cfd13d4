"""Evaluate a trained model on evaluation domains, without Ray or MLflow.

A checkpoint is either the exported inference model (``model_export.pt``,
what MLflow stores as ``model/model_export.pt``) or a training checkpoint
(``checkpoint.pt``); both carry the run config, from which the network and
the strategies' inference parts (C2F's stages) are rebuilt.

Domains (:mod:`hardseg.data.domains`): the dataset's own splits (``val``,
``fog-1`` … ``fog-5``, ``night-3``, ``target`` for the synthetic benchmark), or
another dataset with the same label space given as ``cityscapes:PATH[:SPLIT]``
/ ``folder:PATH[:SPLIT]`` (split ``val`` by default, named after the folder),
optionally after ``NAME=``, e.g. a Cityscapes model on a foggy Cityscapes copy.
Metrics are named ``<domain>/<metric>`` as in training (``fog-3/miou``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from hardseg.config import RunConfig, TTAConfig, validate_config
from hardseg.data import dataset_info
from hardseg.errors import ConfigError
from hardseg.trainables.loop import StepSettings, build_training_model, eval_batch_size, evaluate_on_domains


def load_inference_model(path: str | Path) -> tuple[nn.Module, RunConfig]:
    """The inference model stored at ``path`` and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (pass a model_export.pt or checkpoint.pt file)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"{path} is not a hardseg checkpoint (no 'model' and 'config' entries)")
    cfg = RunConfig.model_validate(state["config"])
    # Class frequencies only shape cb_ce's training loss; inference does not use them. The stored
    # weights replace the initial ones: model.pretrained / init_from files are not needed (nor read).
    info = dataset_info(cfg.data)
    build_cfg = cfg.model_copy(deep=True)
    build_cfg.model.pretrained, build_cfg.model.init_from = "none", None
    tm, _ = build_training_model(build_cfg, info, np.ones(info.num_classes))
    if "optimizer" in state:  # a training checkpoint: the whole TrainingModel
        tm.load_state_dict(state["model"])
        return tm.export().eval(), cfg
    model = tm.export()
    model.load_state_dict(state["model"])
    return model.eval(), cfg


@torch.no_grad()
def evaluate_domains(model: nn.Module, cfg: RunConfig, domains: list[str], device: str = "cpu",
                     batch_size: int | None = None) -> dict[str, float]:
    """``{"<domain name>/<metric>": value}`` for every domain spec (bad specs or data raise DataError).

    Batches of ``batch_size`` (default ``eval.batch_size``), whole or sliding-window inference and
    autocast (``train.amp``) as the run's ``cfg.eval`` and ``cfg.train`` say.
    """
    dev = torch.device(device)
    size = batch_size or eval_batch_size(cfg)
    return evaluate_on_domains(model.to(dev), cfg, domains,
                               lambda ds: DataLoader(ds, batch_size=size, pin_memory=dev.type == "cuda"),
                               StepSettings.resolve(cfg, dev, world_size=1))


def with_inference_options(cfg: RunConfig, mode: str | None = None, crop: Sequence[int] | None = None,
                           stride: Sequence[int] | None = None, tta_scales: Sequence[float] | None = None,
                           tta_flip: bool | None = None, tta_img_scale: Sequence[int] | None = None) -> RunConfig:
    """``cfg`` with a command line's inference options (``hardseg evaluate`` / ``predict``: ``--mode``,
    ``--crop``, ``--stride``, ``--tta-scales``, ``--tta-flip``, ``--tta-img-scale``) in place of the run's
    ``eval`` settings, validated as a config (a scale <= 0 or a slide mode without a window raise ConfigError)."""
    tree: dict[str, Any] = cfg.model_dump(mode="json")
    ev = tree["eval"]
    if mode is not None:
        ev["mode"] = mode
    if crop is not None:
        ev["crop"] = list(crop)
    if stride is not None:
        ev["stride"] = list(stride)
    if tta_scales is not None or tta_flip or tta_img_scale is not None:
        tta = ev.get("tta") or TTAConfig().model_dump(mode="json")
        if tta_scales is not None:
            tta["scales"] = list(tta_scales)
        if tta_flip:
            tta["flip"] = True
        if tta_img_scale is not None:
            tta["img_scale"] = list(tta_img_scale)
        ev["tta"] = tta
    return validate_config(tree, "inference options")  # check_eval: a slide mode needs a window

"""Evaluate a trained model on evaluation domains, without Ray or MLflow.

A checkpoint is either the exported inference model (``model_export.pt``,
what MLflow stores as ``model/model_export.pt``) or a training checkpoint
(``checkpoint.pt``); both carry the run config, from which the network and
the strategies' inference parts (C2F's stages) are rebuilt.

Domains: the dataset's own splits (``val``, ``fog-1`` … ``fog-5``, ``night-3``,
``target`` for the synthetic benchmark), or another dataset with the same
label space given as ``cityscapes:PATH[:SPLIT]`` / ``folder:PATH[:SPLIT]``
(split ``val`` by default), e.g. a Cityscapes model on a foggy Cityscapes copy.
Metrics are named ``<domain>/<metric>`` as in training (``fog-3/miou``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from hardseg.config import RunConfig
from hardseg.data import build_dataset, dataset_info
from hardseg.errors import ConfigError, DataError
from hardseg.models import build_model
from hardseg.strategies import Objective, StrategyContext, TrainingModel
from hardseg.trainables.loop import _metrics_for, evaluate


def load_inference_model(path: str | Path) -> tuple[nn.Module, RunConfig]:
    """The inference model stored at ``path`` and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (pass a model_export.pt or checkpoint.pt file)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"{path} is not a hardseg checkpoint (no 'model' and 'config' entries)")
    cfg = RunConfig.model_validate(state["config"])
    info = dataset_info(cfg.data)
    # Class frequencies only shape cb_ce's training loss; inference does not use them.
    ctx = StrategyContext(num_classes=info.num_classes, ignore_index=info.ignore_index,
                          class_frequencies=np.ones(info.num_classes), hierarchy=info.hierarchy,
                          aux_weight=cfg.model.aux_weight)
    net = build_model(cfg.model.name, info.num_classes, aux=cfg.model.aux, width=cfg.model.width, norm=cfg.model.norm)
    tm = TrainingModel(net, Objective(cfg.strategies, cfg.strategy_params, ctx))
    if "optimizer" in state:  # a training checkpoint: the whole TrainingModel
        tm.load_state_dict(state["model"])
        return tm.export().eval(), cfg
    model = tm.export()
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def domain_data(cfg: RunConfig, domain: str):
    """The dataset of one domain spec (module docstring)."""
    kind, _, rest = domain.partition(":")
    if kind in ("cityscapes", "folder") and rest:
        root, _, split = rest.partition(":")
        data = cfg.data.model_copy(update={"dataset": kind, "root": str(Path(root).resolve())})
        return build_dataset(data, split or "val", train=False)
    return build_dataset(cfg.data, domain, train=False)


@torch.no_grad()
def evaluate_domains(model: nn.Module, cfg: RunConfig, domains: list[str], device: str = "cpu",
                     batch_size: int = 32) -> dict[str, float]:
    """``{"<domain>/<metric>": value}`` for every domain."""
    model = model.to(device)
    out: dict[str, Any] = {}
    for domain in domains:
        try:
            ds = domain_data(cfg, domain)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise DataError(f"evaluation domain '{domain}': {err}") from None
        if ds.info.num_classes != dataset_info(cfg.data).num_classes:
            raise DataError(f"evaluation domain '{domain}' has {ds.info.num_classes} classes; the model was "
                            f"trained on {dataset_info(cfg.data).num_classes} (same label space needed)")
        loader = DataLoader(ds, batch_size=batch_size)
        res = evaluate(model, loader, torch.device(device), _metrics_for(ds.info))
        out.update({f"{domain}/{k}": v for k, v in res.items()})
    return out

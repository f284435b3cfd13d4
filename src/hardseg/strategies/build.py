"""A run's training model: the network of ``cfg.model`` with the strategies' modules and the weight
files it starts from, built for the loop's workers, for loading a checkpoint, and on PyTorch's meta
device for the driver's check (:func:`check_strategies_fit`) before anything runs or is logged.

Imports neither Ray nor MLflow nor the training loop, so a driver can check a config with it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Protocol

import numpy as np
import torch

from hardseg.data import dataset_info
from hardseg.models import build_model
from hardseg.models.pretrained import load_weights
from hardseg.strategies.base import StrategyContext
from hardseg.strategies.objective import Objective, TrainingModel


class RunSettings(Protocol):
    """What the build reads of a run's config: a :class:`hardseg.config.HardsegConfig`, which sits above the
    strategies (docs/architecture.md) and is not imported here."""

    model: Any
    loss: Any
    data: Any
    strategies: list[str]
    strategy_params: dict[str, Any]


def build_training_model(cfg: RunSettings, info, class_frequencies: np.ndarray | None, meta: bool = False
                         ) -> tuple[TrainingModel, Objective]:
    """The network of ``cfg.model`` with the strategies' modules, for a dataset described by ``info``.

    ``meta``: build the network and the modules on PyTorch's meta device (no
    memory, no init cost), which is all :func:`check_strategies_fit` needs.
    Pretrained and warm-start weights (``model.pretrained``, ``model.init_from``)
    are loaded, or on the meta device only checked; ``tm.weight_reports``
    says what each file gave.

    Raises ConfigError for strategy settings that do not fit the model or the
    dataset (an SR exit or a C2F feature the model lacks, C2F without a
    class hierarchy).
    """
    ctx = StrategyContext(num_classes=info.num_classes, ignore_index=info.ignore_index,
                          class_frequencies=class_frequencies, hierarchy=info.hierarchy,
                          aux_weight=cfg.model.aux_weight, palette=info.colors(), average=cfg.loss.average)
    objective = Objective(cfg.strategies, cfg.strategy_params, ctx)
    with torch.device("meta") if meta else nullcontext():
        net = build_model(cfg.model.name, info.num_classes, aux=cfg.model.aux, width=cfg.model.width,
                          norm=cfg.model.norm, encoder=cfg.model.encoder, align_corners=cfg.model.align_corners)
        tm = TrainingModel(net, objective)
    # model.pretrained / model.init_from (models/pretrained.py); on the meta device only checked
    tm.weight_reports = load_weights(tm.net, tm.export(), cfg.model, load=not meta, training=tm)
    return tm, objective


def check_strategies_fit(cfg: RunSettings) -> list:
    """Build the training model on the meta device so that model- and dataset-dependent strategy
    settings and weight files fail on the driver, before anything is logged; ConfigError names the key.
    Returns the weight files' load reports (:class:`hardseg.models.pretrained.LoadReport`)."""
    info = dataset_info(cfg.data)
    tm, _ = build_training_model(cfg, info, np.ones(info.num_classes), meta=True)
    return tm.weight_reports

"""The optimiser and its learning rate: SGD or AdamW over a training model's parameter groups, the
lr of each iteration set from the run's :class:`~hardseg.trainables.schedule.Schedule`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from hardseg.config import HardsegConfig
from hardseg.strategies import TrainingModel
from hardseg.trainables.schedule import Schedule


def build_optimizer(cfg: HardsegConfig, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW over a :class:`TrainingModel`'s ``param_groups()``: the network, then each strategy's
    modules as their own group at ``train.lr`` × the group's ``lr_mult`` (``strategy_params.hl.lr_mult``);
    any other module is one group. ``fused`` (CUDA) also lets GradScaler skip its per-step host sync."""
    t = cfg.train
    found = model.param_groups() if isinstance(model, TrainingModel) \
        else [{"params": list(model.parameters()), "lr_mult": 1.0}]
    groups = [{**g, "lr": t.lr * g["lr_mult"]} for g in found]
    extra = {"fused": True} if fused else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **extra)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, **extra)


class ScheduledLR:
    """Sets every parameter group's learning rate from a :class:`~hardseg.trainables.schedule.Schedule`
    before each iteration, each group from its own base rate (``train.lr`` × its ``lr_mult``), as mmcv's
    ``LrUpdaterHook``. ``last_epoch`` counts the iterations done (the name torch's schedulers use)."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule):
        self.optimizer, self.schedule = optimizer, schedule
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.schedule.lr_at(self.last_epoch, base)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch, self.base_lrs = state["last_epoch"], list(state["base_lrs"])
        self._apply()


def poly_lambda(total_steps: int, power: float, warmup_steps: int = 0):
    """Poly LR (1 − t/T)^power after a linear warm-up from 0, as a ``LambdaLR`` factor (benchmarks' bare loops)."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power
    return f

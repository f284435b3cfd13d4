"""What a checkpoint holds and how it is written: the training state to resume (``checkpoint.pt``)
and, in the final checkpoint, the exported best model (``model_export.pt``, MLflow's
``model/model_export.pt``).

A checkpoint holds tensors, numbers, strings and the config as JSON; no hardseg class is pickled
into it, so the modules here may move without breaking old checkpoints.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from hardseg.config import HardsegConfig
from hardseg.strategies import TrainingModel
from hardseg.trainables.best import BestModel, BestStore
from hardseg.trainables.schedule import Schedule

CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_FILE = "model_export.pt"


def rng_states() -> dict[str, Any]:
    """This process's random states: torch (CPU and every CUDA device), numpy and Python's."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's :func:`rng_states`, in rank order (a collective: every rank calls it)."""
    mine = rng_states()
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * world_size
        dist.all_gather_object(out, mine)
        return out
    return [mine]


@dataclass
class TrainingState:
    """What a checkpoint saves and a resumed run restores (``checkpoint.pt``): model, optimiser,
    schedule, grad scaler, the iterations done (the sampler's position), every rank's RNG states,
    the best evaluation so far (its weights by name in the :class:`BestStore`, not copied) and the
    best files the kept checkpoints name."""

    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scheduler: Any  # ScheduledLR
    scaler: torch.amp.GradScaler | None
    best: BestModel
    store: BestStore = field(default_factory=BestStore)
    kept: list[str] = field(default_factory=list)  # best files of the checkpoints on disk, oldest first
    done: int = 0  # iterations done

    def state_dict(self, done: int, cfg: HardsegConfig, rng: list[dict[str, Any]], schedule: Schedule) -> dict[str, Any]:
        """The state after ``done`` iterations, with the run's config."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "iteration": done, "unit": schedule.unit, "epoch": schedule.step_of(done) - 1,
                "best": self.best.state_dict(weights=False),
                "best_file": BestStore.name_of(self.best.epoch) if self.best.weights is not None else None,
                "kept": list(self.kept), "rng": rng, "config": cfg.model_dump(mode="json")}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint's state; returns the iterations already done (RNG states: :func:`set_rng_states`)."""
        self.best.load_state_dict(state.get("best"))
        if state.get("best_file"):
            self.best.weights = self.store.load(state["best_file"])["model"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.kept = list(state.get("kept", []))
        self.done = state["iteration"]
        return self.done


def save_checkpoint(cfg: HardsegConfig, done: int, state: TrainingState, export: nn.Module,
                    rng: list[dict[str, Any]], schedule: Schedule, final: bool) -> Path:
    """A new folder with ``checkpoint.pt`` (the training state after ``done`` iterations, to resume).

    The best model so far is written once to the :class:`BestStore` (``best-<step>.pt``) when it
    changed, and best files that no kept checkpoint names are deleted (``train.keep_checkpoints``).
    The ``final`` checkpoint also holds ``model_export.pt`` (the best model; ``export``, the last
    inference model, if nothing was evaluated), which the platform logs to MLflow.
    """
    best = state.best
    if best.weights is not None:
        name = BestStore.name_of(best.epoch)
        if name not in state.store.names():
            state.store.save(name, {"model": best.weights, schedule.unit: best.epoch, "val": best.val})
        state.kept = [*state.kept, name][-cfg.train.keep_checkpoints:]
        state.store.keep_only(set(state.kept))
    d = Path(tempfile.mkdtemp(prefix="hardseg-ckpt-"))
    torch.save(state.state_dict(done, cfg, rng, schedule), d / CHECKPOINT_FILE)
    if final:
        weights = best.weights if best.weights is not None else export.state_dict()
        torch.save({"model": weights, "epoch": best.epoch or schedule.length, "unit": schedule.unit,
                    "config": cfg.model_dump(mode="json"),
                    "num_parameters": sum(p.numel() for p in export.parameters())}, d / EXPORT_FILE)
    return d

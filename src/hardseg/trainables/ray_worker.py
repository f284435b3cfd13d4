"""The loop as a Ray Train (V2) ``train_loop_per_worker``.

``TorchTrainer`` starts the workers and a gloo (CPU) or NCCL (GPU) process
group; :class:`RaySession` adapts Ray Train's context to the loop's
:class:`~hardseg.trainables.loop.Session`. A non-finite loss is reported, not
raised (:func:`fit_worker`): an exception would make Ray retry the run from its
last checkpoint and fail again at the same step.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import ray.train.torch
import torch
import torch.nn as nn
from ray.experimental.tqdm_ray import tqdm

from hardseg import keys, timeline
from hardseg.config import HardsegConfig
from hardseg.errors import NonFiniteLoss
from hardseg.trainables.best import BestStore
from hardseg.trainables.checkpoints import CHECKPOINT_FILE
from hardseg.trainables.progress import BAR_ENV, set_bar_factory

if TYPE_CHECKING:
    from hardseg.trainables.loop import Session

# What a worker must not load (the driver's side): a test and the timeline check sys.modules for them.
DRIVER_ONLY = ("ray.tune", "optuna", "mlflow")


def _quiet_report_log() -> None:
    """Ray Train logs every report's full metrics dict at INFO under a logger named
    after its file path, which LoggingConfig does not reach; keep only warnings."""
    try:
        # local: a private Ray module that another Ray version may not have; the try keeps the run going
        from ray.train.v2._internal.execution import context as _train_context

        _train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass


class RaySession:
    def __init__(self) -> None:
        _quiet_report_log()
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        storage = ctx.get_storage()  # the best model, once, beside the run's checkpoints
        self.best_store = BestStore(storage.storage_filesystem, f"{storage.experiment_fs_path}/best")

    def wrap_model(self, model: nn.Module) -> nn.Module:
        # DDP when world_size > 1; the model is already on the device.
        return ray.train.torch.prepare_model(model, move_to_device=False)

    def load_checkpoint(self) -> dict[str, Any] | None:
        timeline.mark("worker: data and model built", rank=self.rank)
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        unit = state.get("unit", "epoch")
        at = state["epoch"] + 1 if unit == "epoch" else state["iteration"]
        print(f"[hardseg] rank {self.rank}: resuming after {unit} {at} from {ckpt.path}", flush=True)
        return state

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if timeline.enabled():
            first = metrics.get(f"{keys.TRAIN_PREFIX}first_step_unix")
            if isinstance(first, float):
                timeline.mark("worker: first step", t=first, rank=self.rank, epoch=metrics.get("epoch"))
                timeline.mark("worker: last step done", t=first + metrics[f"{keys.TRAIN_PREFIX}epoch_time_s"],
                              rank=self.rank, epoch=metrics.get("epoch"))
            timeline.mark("worker: evaluated, reporting", rank=self.rank, epoch=metrics.get("epoch"))
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        timeline.mark("worker: report returned (checkpoint persisted)", rank=self.rank, epoch=metrics.get("epoch"))

    def log(self, metrics: dict[str, Any]) -> None:
        """A per-iteration log or the visuals: a report without a checkpoint (every rank makes it)."""
        ray.train.report(metrics)


def fit_worker(cfg: HardsegConfig, session: Session) -> None:
    """:func:`~hardseg.trainables.loop.fit` on a Ray Train worker. Every rank meets a
    :class:`~hardseg.errors.NonFiniteLoss` at the same step and reports it
    (:meth:`~hardseg.errors.NonFiniteLoss.as_report`); the MLflow callback turns the report
    into the run's ``hardseg.error`` tag and the driver raises NonFiniteLoss again
    (``hardseg.platform.runs.raise_if_run_failed``)."""
    from hardseg.trainables.loop import fit  # local: loaded by train_loop_per_worker already

    try:
        fit(cfg, session)
    except NonFiniteLoss as err:
        session.report(err.as_report(), None)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point given to ``TorchTrainer``; ``config["run"]`` is a HardsegConfig dump."""
    # A process that only builds the TorchTrainer (a sweep trial, the driver) pickles this function by
    # reference and never loads the loop; the worker does, here.
    # local: the loop (torchvision, the data and model code) costs seconds to import (issue 26)
    import hardseg.trainables.loop  # noqa: F401

    if timeline.enabled():
        timeline.mark("worker: process started", t=timeline.process_start())
        timeline.mark("worker: loop modules imported")
        timeline.mark("worker: train function started",
                      driver_modules=sorted(m for m in DRIVER_ONLY if m in sys.modules))
    session = RaySession()
    if session.rank == 0 and os.environ.get(BAR_ENV) == "1":
        set_bar_factory(tqdm)  # drawn by Ray on the driver's terminal
    fit_worker(HardsegConfig.model_validate(config["run"]), session)
    timeline.mark("worker: train function done", rank=session.rank)

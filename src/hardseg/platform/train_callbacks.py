"""Callbacks on Ray Train's controller: each report to MLflow, MLflow's import off the critical path,
the worker group's placement group for the driver's reaper, and the run's timeline.

Ray unpickles these callbacks twice per run, each time in fresh processes: in the controller actor,
before it starts the worker group, and in *every training worker* (the run's ``RunConfig``, callbacks
included, travels to the workers in Train's context). Unpickling imports the callback's module, so
this module imports Ray Train and the standard library only, and a callback does nothing when it is
unpickled. Before issue 26 the callback lived in :mod:`hardseg.platform.trainer` and held an MLflow
client: the controller and each worker imported torch, MLflow, the data package and the export code
(5–8 s per process on a 2-core machine) before the run could start.

MLflow (≈2 s to import) is needed in the controller only, at the first report; :class:`ControllerHooks`
imports it in a thread as soon as the controller has started, while the controller waits for the
worker processes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import ray
from ray.train import UserCallback

from hardseg import timeline
from hardseg.platform import worker_groups

try:  # Ray Train's internal callback API (controller and worker-group hooks); another Ray may not have it
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
except ImportError:  # pragma: no cover - then no warm-up and no controller marks
    ControllerCallback = WorkerGroupCallback = None

_TRACKING_READY = threading.Event()


def _import_tracking():
    # local: MLflow loads in the controller only, and there off the critical path (module docstring)
    from hardseg.platform import tracking

    _TRACKING_READY.set()
    return tracking


class MLflowCallback(UserCallback):
    """Ray Train V2 callback on the controller: rank 0's report of each epoch (and the visuals of its
    checkpoint) to MLflow run ``run_id`` (:class:`~hardseg.platform.tracking.MLflowEpochLogger`)."""

    def __init__(self, tracking_uri: str, run_id: str, logged: dict[str, int] | None = None) -> None:
        self.tracking_uri, self.run_id, self.logged = tracking_uri, run_id, logged
        self._logger = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "logged": self.logged, "_logger": None}

    @property
    def logger(self):
        if self._logger is None:
            self._logger = _import_tracking().MLflowEpochLogger(self.tracking_uri, self.run_id, self.logged)
        return self._logger

    def after_report(self, run_context, metrics, checkpoint) -> None:
        rank0 = metrics[0] if metrics else {}  # per-iteration logs and visuals are reports without a checkpoint
        timeline.mark("controller: report received", epoch=rank0.get("epoch"))
        if checkpoint is None:
            self.logger.log(rank0, None)
        else:
            with checkpoint.as_directory() as d:
                self.logger.log(rank0, Path(d))
        timeline.mark("controller: report logged to MLflow", epoch=rank0.get("epoch"))


if ControllerCallback is not None:

    class ControllerHooks(ControllerCallback, WorkerGroupCallback):
        """Starts MLflow's import once the controller runs; records a handle of the controller while it
        runs and the worker group's placement group while the group is up
        (:mod:`hardseg.platform.worker_groups`); marks the controller's stages on a timeline."""

        def after_controller_start(self, train_run_context) -> None:
            self._controller_id = ray.get_runtime_context().get_actor_id()
            self._run_name = train_run_context.get_run_config().name
            worker_groups.record_controller(self._run_name)  # for a sweep trial that Tune stops
            if not _TRACKING_READY.is_set():
                threading.Thread(target=_import_tracking, name="hardseg-mlflow-import", daemon=True).start()
            timeline.mark("controller: started", process_start=timeline.process_start(),
                          env={k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")})

        def before_worker_group_start(self, worker_group_context) -> None:
            timeline.mark("controller: worker group starting")

        def after_worker_group_start(self, worker_group) -> None:
            timeline.mark("controller: worker group started (process group up)")
            # for the driver's reaper, should this controller die with the group up (hardseg.platform.worker_groups)
            worker_groups.record(self._controller_id,
                                 worker_group.get_worker_group_state().placement_group_handle.placement_group)

        def after_worker_group_training_start(self, worker_group) -> None:
            timeline.mark("controller: train function launched")

        def before_worker_group_shutdown(self, worker_group) -> None:
            timeline.mark("controller: worker group shutting down")

        def after_worker_group_shutdown(self, worker_group_context) -> None:
            timeline.mark("controller: worker group shut down")
            worker_groups.forget(self._controller_id)

        def after_controller_finish(self, result) -> None:
            worker_groups.forget_controller(self._run_name)
            timeline.mark("controller: finished")


def controller_callbacks() -> list:
    """The internal callbacks every hardseg TorchTrainer adds (none where this Ray lacks the API)."""
    return [ControllerHooks()] if ControllerCallback is not None else []

"""Callbacks on Ray Train's controller: each report relayed to the driver (which logs it to MLflow), the worker
group's placement group for the driver's reaper, and the run's timeline.

Ray unpickles these callbacks twice per run, each time in fresh processes: in the controller actor,
before it starts the worker group, and in *every training worker* (the run's ``RunConfig``, callbacks
included, travels to the workers in Train's context). Unpickling imports the callback's module, so
this module imports Ray Train and the standard library only, and a callback does nothing when it is
unpickled. Before issue 26 the callback lived in :mod:`hardseg.platform.trainer` and held an MLflow
client: the controller and each worker imported torch, MLflow, the data package and the export code
(5–8 s per process on a 2-core machine) before the run could start.

The controller does not log to MLflow either: MLflow costs ≈2.5 CPU-s to import, once per run in a process
that has nothing else to use it for, while the run's driver (``hardseg train``, or the sweep trial) has it
loaded already. :class:`ReportRelay` puts each report (rank 0's metrics and the checkpoint) into the GCS's
key-value store, which every process of the Ray cluster reaches, under the run's channel; the driver's
:class:`hardseg.platform.trainer.ReportLogger` takes them out in order and logs them.
"""

from __future__ import annotations

import os
import pickle

import ray
from ray.experimental import internal_kv as kv
from ray.train import UserCallback

from hardseg import timeline
from hardseg.platform import worker_groups

try:  # Ray Train's internal callback API (controller and worker-group hooks); another Ray may not have it
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
except ImportError:  # pragma: no cover - then no warm-up and no controller marks
    ControllerCallback = WorkerGroupCallback = None

REPORTS = "hardseg-reports"  # the GCS key-value namespace of reports on their way to the driver


def report_key(channel: str, n: int) -> str:
    """The key of the ``n``-th report of ``channel``: zero-padded, so keys sort in the order reports came."""
    return f"{channel}/{n:09d}"


class ReportRelay(UserCallback):
    """Ray Train V2 callback on the controller: rank 0's report of each epoch (per-iteration logs and
    visuals are reports too) and its checkpoint, if any, put under :func:`report_key` for the driver
    (module docstring). ``channel`` is the run's own (made by :func:`hardseg.platform.trainer.make_trainer`)."""

    def __init__(self, channel: str) -> None:
        self.channel, self.sent = channel, 0

    def after_report(self, run_context, metrics, checkpoint) -> None:
        rank0 = metrics[0] if metrics else {}
        kv._internal_kv_put(report_key(self.channel, self.sent), pickle.dumps((rank0, checkpoint)), namespace=REPORTS)
        self.sent += 1
        timeline.mark("controller: report relayed", epoch=rank0.get("epoch"))


if ControllerCallback is not None:

    class ControllerHooks(ControllerCallback, WorkerGroupCallback):
        """Records a handle of the controller while it runs and the worker group's placement group while the group is up
        (:mod:`hardseg.platform.worker_groups`); marks the controller's stages on a timeline."""

        def after_controller_start(self, train_run_context) -> None:
            self._controller_id = ray.get_runtime_context().get_actor_id()
            self._run_name = train_run_context.get_run_config().name
            worker_groups.record_controller(self._run_name)  # for a sweep trial that Tune stops
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

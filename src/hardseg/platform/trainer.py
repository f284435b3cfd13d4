"""The Ray Train ``TorchTrainer`` of one run: DDP workers sized by :func:`hardseg.platform.cluster.worker_resources`,
checkpoints under ``ray.storage_path``, each report relayed by a callback on the Train controller to this
process, which logs it to the run's MLflow run while ``fit()`` runs (:class:`ReportLogger`; workers and
the controller never talk to MLflow, :mod:`hardseg.platform.train_callbacks`)."""

from __future__ import annotations

import os
import pickle
import threading
import uuid
from pathlib import Path
from typing import Callable

from ray.experimental import internal_kv as kv
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchTrainer

from hardseg import timeline
from hardseg.config import HardsegConfig
from hardseg.platform import runs, tracking
from hardseg.platform.cluster import CONTROLLER_ENV, worker_resources
from hardseg.platform.torch_backend import TorchBackendConfig
from hardseg.platform.train_callbacks import REPORTS, ReportRelay, controller_callbacks
from hardseg.trainables.ray_worker import train_loop_per_worker

try:  # callbacks Ray Train 2.60 adds to every run; HardsegTorchTrainer leaves these two out
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
except ImportError:  # pragma: no cover - another Ray: nothing is left out
    DatasetsCallback = PlacementGroupCleanerCallback = None

__all__ = ["CONTROLLER_ENV", "HardsegTorchTrainer", "ReportLogger", "log_result", "make_trainer", "scaling_config"]


class ReportLogger(threading.Thread):
    """The driver's end of :class:`~hardseg.platform.train_callbacks.ReportRelay`: while ``fit()`` runs, takes
    the run's reports out of the GCS's key-value store every ``interval_s`` (0.2 s), in the order they came,
    and logs each to MLflow (:class:`~hardseg.platform.tracking.MLflowEpochLogger`, which skips steps the
    run has already: ``logged``). :meth:`finish` logs what is left once ``fit()`` has returned or raised."""

    def __init__(self, tracking_uri: str, run_id: str, channel: str, logged: dict[str, int] | None = None,
                 interval_s: float = 0.2) -> None:
        super().__init__(name="hardseg-report-logger", daemon=True)
        self.logger = tracking.MLflowEpochLogger(tracking_uri, run_id, logged)
        self.channel, self.interval_s = channel, interval_s
        self.error: BaseException | None = None
        self._done = threading.Event()

    def drain(self) -> None:
        for key in sorted(kv._internal_kv_list(f"{self.channel}/", namespace=REPORTS)):
            metrics, checkpoint = pickle.loads(kv._internal_kv_get(key, namespace=REPORTS))
            if checkpoint is None:
                self.logger.log(metrics, None)
            else:
                with checkpoint.as_directory() as d:
                    self.logger.log(metrics, Path(d))
            kv._internal_kv_del(key, namespace=REPORTS)
            timeline.mark("driver: report logged to MLflow", epoch=metrics.get("epoch"))

    def run(self) -> None:
        try:
            while not self._done.wait(self.interval_s):
                self.drain()
        except BaseException as e:  # raised again by finish(), in the driver's own thread
            self.error = e

    def finish(self) -> None:
        """Stop polling, log the reports still in the store, and raise what logging raised meanwhile."""
        self._done.set()
        self.join()
        if self.error is not None:
            raise self.error
        self.drain()


class HardsegTorchTrainer(TorchTrainer):
    """Ray Train's ``TorchTrainer`` less two actors of its own per run, each a process to start on the
    way to the first step:

    * the ``PlacementGroupCleaner``, which needs Ray's State API (the dashboard) to see a controller die;
      :mod:`hardseg.platform.worker_groups` does its work through the GCS, from the driver;
    * the Ray Data ``DatasetManager`` (and the autoscaling coordinator it starts), made even for a run
      without Ray Datasets, as every hardseg run is: its workers read their own data loaders.

    :func:`make_trainer` also gives it a torch backend whose controller imports no torch
    (:mod:`hardseg.platform.torch_backend`).
    """

    report_to: tuple[str, str, str, dict[str, int] | None] | None = None  # ReportLogger's arguments (make_trainer)

    def fit(self):
        """Ray Train's ``fit()``, with the run's reports logged to MLflow meanwhile (a :class:`ReportLogger`
        of this fit's own: a thread starts once)."""
        if self.report_to is None:
            return super().fit()
        logger = ReportLogger(*self.report_to)
        logger.start()
        try:
            return super().fit()
        finally:
            logger.finish()

    def _create_default_callbacks(self) -> list:
        left_out = tuple(c for c in (PlacementGroupCleanerCallback, None if self.datasets else DatasetsCallback) if c)
        return [c for c in super()._create_default_callbacks() if not isinstance(c, left_out)]


def scaling_config(cfg: HardsegConfig) -> ScalingConfig:
    """Ray Train's ``ScalingConfig``: ``ray.num_workers`` workers of :func:`worker_resources` each."""
    return ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                         resources_per_worker=worker_resources(cfg))


def make_trainer(cfg: HardsegConfig, run_id: str, uri: str, *, name: str | None = None,
                 callbacks: list | None = None, train_loop: Callable[[dict], None] | None = None,
                 logged: dict[str, int] | None = None) -> HardsegTorchTrainer:
    """The ``TorchTrainer`` of one run: DDP workers, ``train.keep_checkpoints`` checkpoints under
    ``cfg.ray.storage_path``, each report logged to MLflow run ``run_id`` (relayed by a callback on the Train
    controller to :class:`ReportLogger` in this process).

    ``train_loop``: what each worker runs (default :func:`~hardseg.trainables.ray_worker.train_loop_per_worker`).
    ``name``: the Train run's folder (default ``train-<run_id>``); a folder that holds checkpoints already
    is restored from its latest one (``hardseg train --resume``). ``logged``: the steps the MLflow run
    has already (:func:`hardseg.platform.tracking.last_steps`), not logged again.
    """
    # Ray Train passes these on to the controller actor (its ENV_VARS_TO_PROPAGATE, read from this
    # process's environment at fit()); set here too for a trainer made without ensure_ray.
    for key, value in CONTROLLER_ENV.items():
        os.environ.setdefault(key, value)
    channel = f"{run_id}/{uuid.uuid4().hex[:12]}"  # this fit's own: reports of an earlier, killed driver stay out
    trainer = HardsegTorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json")},
        torch_config=TorchBackendConfig(),  # Ray's, less torch in the controller (hardseg.platform.torch_backend)
        scaling_config=scaling_config(cfg),
        run_config=TrainRunConfig(
            name=name or f"train-{run_id}",
            storage_path=cfg.ray.storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=[ReportRelay(channel), *(callbacks or []), *controller_callbacks()],
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train's print patch would echo every progress line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    trainer.report_to = (uri, run_id, channel, logged)
    return trainer


def log_result(client: tracking.MlflowClient, run_id: str, result, config_yaml: str, wall_s: float) -> None:
    """Log the exported model of a finished ``TorchTrainer``'s last checkpoint (none: config and wall
    time only), :func:`hardseg.platform.runs.log_checkpoint_artifacts`."""
    if result.checkpoint is None:
        runs.log_checkpoint_artifacts(client, run_id, None, config_yaml, wall_s)
        return
    with result.checkpoint.as_directory() as d:
        runs.log_checkpoint_artifacts(client, run_id, Path(d), config_yaml, wall_s)

"""The Ray Train ``TorchTrainer`` of one run: DDP workers sized by :func:`hardseg.platform.cluster.worker_resources`,
checkpoints under ``ray.storage_path``, each report logged to the run's MLflow run by a callback on the
Train controller (workers never talk to MLflow)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig, UserCallback
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchTrainer

from hardseg.config import RunConfig
from hardseg.platform import runs, tracking
from hardseg.platform.cluster import worker_resources
from hardseg.trainables.ray_worker import train_loop_per_worker


# Ray Train's controller settings (read from the driver's environment and passed on
# to the controller; an explicit value in the environment wins). The controller polls
# its workers every 2 s by default, which delays every report, the end of a run and
# each sweep trial; the preemption watcher is one more actor per run, for spot
# instances hardseg does not manage (and it logs a spurious ERROR, Ray issue #53727).
CONTROLLER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def scaling_config(cfg: RunConfig) -> ScalingConfig:
    """Ray Train's ``ScalingConfig``: ``ray.num_workers`` workers of :func:`worker_resources` each."""
    return ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                         resources_per_worker=worker_resources(cfg))


def make_trainer(cfg: RunConfig, run_id: str, uri: str, *, name: str | None = None,
                 callbacks: list | None = None, train_loop: Callable[[dict], None] | None = None,
                 logged: dict[str, int] | None = None) -> TorchTrainer:
    """The ``TorchTrainer`` of one run: DDP workers, ``train.keep_checkpoints`` checkpoints under
    ``cfg.ray.storage_path``, each report logged to MLflow run ``run_id`` by a callback on the Train controller.

    ``train_loop``: what each worker runs (default :func:`~hardseg.trainables.ray_worker.train_loop_per_worker`).
    ``name``: the Train run's folder (default ``train-<run_id>``); a folder that holds checkpoints already
    is restored from its latest one (``hardseg train --resume``). ``logged``: the steps the MLflow run
    has already (:func:`hardseg.platform.tracking.last_steps`), not logged again.
    """
    for key, value in CONTROLLER_ENV.items():
        os.environ.setdefault(key, value)
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json")},
        scaling_config=scaling_config(cfg),
        run_config=TrainRunConfig(
            name=name or f"train-{run_id}",
            storage_path=cfg.ray.storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=[MLflowCallback(uri, run_id, logged), *(callbacks or [])],
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train's print patch would echo every progress line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def log_result(client: tracking.MlflowClient, run_id: str, result, config_yaml: str, wall_s: float) -> None:
    """Log the exported model of a finished ``TorchTrainer``'s last checkpoint (none: config and wall
    time only), :func:`hardseg.platform.runs.log_checkpoint_artifacts`."""
    if result.checkpoint is None:
        runs.log_checkpoint_artifacts(client, run_id, None, config_yaml, wall_s)
        return
    with result.checkpoint.as_directory() as d:
        runs.log_checkpoint_artifacts(client, run_id, Path(d), config_yaml, wall_s)


class MLflowCallback(UserCallback):
    """Ray Train V2 callback on the controller: rank 0's report of each epoch (and the visuals of its
    checkpoint) to MLflow run ``run_id`` (:class:`~hardseg.platform.tracking.MLflowEpochLogger`)."""

    def __init__(self, tracking_uri: str, run_id: str, logged: dict[str, int] | None = None) -> None:
        self.logger = tracking.MLflowEpochLogger(tracking_uri, run_id, logged)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        rank0 = metrics[0] if metrics else {}  # per-iteration logs and visuals are reports without a checkpoint
        if checkpoint is None:
            self.logger.log(rank0, None)
            return
        with checkpoint.as_directory() as d:
            self.logger.log(rank0, Path(d))

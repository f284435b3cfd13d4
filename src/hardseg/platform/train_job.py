"""``hardseg train``: one DDP training run on Ray Train, recorded as one MLflow run.

Order matters for "nothing half-written": the config is validated and the
dataset prepared and checked *before* the MLflow run is created; from then on
the run always ends in a terminal state (FINISHED, FAILED or KILLED) with the
reason as the ``hardseg.error`` tag.
"""

from __future__ import annotations

import os
import platform as _platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardseg.config import RunConfig
from hardseg.errors import HardsegError, TrainingError
from hardseg.platform import tracking

EXPORT_ARTIFACT_DIR = "model"
# Ray Train's controller settings (read from the driver's environment and passed on
# to the controller; an explicit value in the environment wins). The controller polls
# its workers every 2 s by default, which delays every report, the end of a run and
# each sweep trial; the preemption watcher is one more actor per run, for spot
# instances hardseg does not manage (and it logs a spurious ERROR, Ray issue #53727).
CONTROLLER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_path: str | None = None
    wall_s: float = 0.0


def absolute_location(location: str, base: Path) -> str:
    """A URI (``s3://``, ``file://``, ...) as is; a local path made absolute against ``base``."""
    return location if "://" in location else str((base / location).resolve())


def resolve_paths(cfg: RunConfig, workdir: Path | None = None) -> RunConfig:
    """Make relative data, storage and evaluation-domain paths absolute (Ray changes the working directory)."""
    from hardseg.data.domains import absolute_spec

    base = (workdir or Path.cwd()).resolve()
    cfg = cfg.model_copy(deep=True)
    cfg.data.root = absolute_location(cfg.data.root, base)
    cfg.ray.storage_path = absolute_location(cfg.ray.storage_path, base)
    cfg.data.eval_domains = [absolute_spec(d, base) for d in cfg.data.eval_domains]
    return cfg


def prepare_data(cfg: RunConfig) -> None:
    """Generate the synthetic set once on the driver, or check a real dataset,
    so that workers neither race to generate it nor fail on a bad file later;
    then check the strategies' settings against the model and the dataset."""
    from hardseg.data import available_splits, build_dataset
    from hardseg.data.domains import build_domain, parse_domains
    from hardseg.trainables.loop import check_strategies_fit

    splits = available_splits(cfg.data)
    domains = parse_domains(cfg.data.eval_domains)  # checks the specs and their metric names
    for split in ["train", "val", *(d.split for d in domains if d.dataset is None)]:
        if split not in splits:
            raise HardsegError(f"data.eval_domains: unknown split '{split}' for dataset '{cfg.data.dataset}'; "
                               f"available: {', '.join(splits)}")
    if cfg.data.dataset != "synthetic":
        for split in ["train", "val"]:
            build_dataset(cfg.data, split, train=False).validate()
    for domain in domains:
        if domain.dataset is not None or cfg.data.dataset != "synthetic":
            build_domain(cfg.data, domain).validate()  # a path spec: same label space, readable files
    check_strategies_fit(cfg)


def git_commit(path: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path.cwd(), capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train_pixels_per_image(cfg: RunConfig) -> int | None:
    """Label pixels of one training image as the config knows them (crop, or the synthetic size), else None."""
    if cfg.data.augment.enabled and cfg.data.augment.crop:
        return cfg.data.augment.crop ** 2
    return cfg.data.synthetic.size ** 2 if cfg.data.dataset == "synthetic" else None


def strategy_warning_tags(cfg: RunConfig) -> dict[str, str]:
    """``hardseg.warning.<strategy>`` tags for settings that run but defeat their strategy
    (OHEM's min_kept ≥ the pixels of an image); empty when the image size is unknown here."""
    from hardseg.strategies import strategy_warnings

    pixels = train_pixels_per_image(cfg)
    if pixels is None:
        return {}
    warnings = strategy_warnings(cfg.strategies, cfg.strategy_params, pixels)
    return {f"hardseg.warning.{name}": msg for name, msg in warnings.items()}


def run_tags(cfg: RunConfig) -> dict[str, str]:
    import ray
    import torch

    return {
        **strategy_warning_tags(cfg),
        "hardseg.kind": "train",
        "hardseg.strategies": "+".join(cfg.strategies),
        "hardseg.model": cfg.model.name,
        "hardseg.dataset": cfg.data.dataset,
        "hardseg.seed": str(cfg.seed),
        "git_commit": git_commit(Path(__file__).parent),
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "python_version": _platform.python_version(),
        "mlflow.runName": cfg.name,
    }


def start_run(cfg: RunConfig, config_text: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None) -> tuple[tracking.MlflowClient, str, str, str]:
    """Create the MLflow run with params, tags and the config artifact."""
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    client = tracking.MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(client, cfg.tracking.experiment, uri)
    all_tags = {**run_tags(cfg), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=cfg.name, tags=all_tags)
    run_id = run.info.run_id
    tracking.log_params(client, run_id, cfg.flat())
    client.log_text(run_id, config_text, "config.yaml")
    return client, uri, exp_id, run_id


def make_trainer(cfg: RunConfig, run_id: str, uri: str, *, name: str | None = None,
                 callbacks: list | None = None):
    """The ``TorchTrainer`` of one run: DDP workers, checkpoints under ``cfg.ray.storage_path``,
    each report logged to MLflow run ``run_id`` by a callback on the Train controller."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hardseg.trainables.ray_worker import train_loop_per_worker

    for key, value in CONTROLLER_ENV.items():
        os.environ.setdefault(key, value)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": cfg.ray.cpus_per_worker}),
        run_config=TrainRunConfig(
            name=name or f"train-{run_id}",
            storage_path=cfg.ray.storage_path,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[tracking.ray_callback(uri, run_id), *(callbacks or [])],
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train's print patch would echo every progress line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def raise_if_run_failed(client: tracking.MlflowClient, run_id: str) -> None:
    """A worker's error report (NaN loss) sets ``hardseg.error``; turn it into a TrainingError."""
    error = client.get_run(run_id).data.tags.get("hardseg.error")
    if error:
        raise TrainingError(f"run {run_id} failed: {error}; lower train.lr or check the data and strategy settings")


def log_final_artifacts(client: tracking.MlflowClient, run_id: str, checkpoint_dir: Path | None,
                        config_text: str, wall_s: float) -> None:
    """The exported model of the last checkpoint, its config and the run's wall time."""
    from hardseg.trainables.loop import EXPORT_FILE

    if checkpoint_dir is not None and (Path(checkpoint_dir) / EXPORT_FILE).is_file():
        client.log_artifact(run_id, str(Path(checkpoint_dir) / EXPORT_FILE), EXPORT_ARTIFACT_DIR)
    client.log_text(run_id, config_text, f"{EXPORT_ARTIFACT_DIR}/config.yaml")
    tracking.log_metrics(client, run_id, {"wall_time_s": wall_s})


class TrialStopped(Exception):
    """A sweep's scheduler stopped this trial early (Tune raises SystemExit in ``tune.report``)."""


class RunCloser:
    """Ends an MLflow run in a terminal state whatever happens inside the ``with``.

    FINISHED when the block completes, KILLED on Ctrl-C or :class:`TrialStopped`
    (then ``hardseg.stop_reason`` holds why), FAILED otherwise; the
    reason goes to the ``hardseg.error`` tag. Exceptions are re-raised, a
    non-hardseg one as :class:`TrainingError` with the innermost cause on one line.
    """

    def __init__(self, client: tracking.MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def __enter__(self) -> "RunCloser":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.client.set_terminated(self.run_id, "FINISHED")
            return False
        if isinstance(exc, KeyboardInterrupt):
            status, reason = "KILLED", "interrupted (Ctrl-C)"
        elif isinstance(exc, TrialStopped):
            tracking.set_tags(self.client, self.run_id, {"hardseg.stop_reason": str(exc)})
            self.client.set_terminated(self.run_id, "KILLED")
            raise SystemExit(0) from None  # let Tune finish stopping the trial
        elif isinstance(exc, HardsegError):
            status, reason = "FAILED", str(exc)
        else:
            status, reason = "FAILED", _one_line(exc)
        tracking.set_tags(self.client, self.run_id, {"hardseg.error": reason})
        self.client.set_terminated(self.run_id, status)
        if status == "FAILED" and not isinstance(exc, HardsegError):
            raise TrainingError(f"run {self.run_id} failed: {reason}") from exc
        return False


def run_training(cfg: RunConfig, *, workdir: Path | None = None, tags: dict[str, str] | None = None) -> TrainOutcome:
    """Validate, prepare data, then train with ``cfg.ray.num_workers`` DDP workers.

    Raises:
        HardsegError: bad input (before anything is logged) or a failed run
            (after the MLflow run was closed as FAILED with the reason).
    """
    from hardseg.platform.cluster import ensure_ray

    cfg = resolve_paths(cfg, workdir)
    prepare_data(cfg)
    ensure_ray(cfg.ray)
    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    for msg in strategy_warning_tags(cfg).values():
        print(f"[hardseg] warning: {msg}", flush=True)
    client, uri, exp_id, run_id = start_run(cfg, config_text, tags)
    print(f"[hardseg] MLflow run {run_id} in experiment '{cfg.tracking.experiment}' at {uri}", flush=True)

    start = time.perf_counter()
    with RunCloser(client, run_id):
        result = make_trainer(cfg, run_id, uri).fit()
        # result.metrics belong to the last checkpoint; an error report carries no
        # checkpoint, so the MLflow callback's error tag is the source of truth.
        raise_if_run_failed(client, run_id)
        wall = time.perf_counter() - start
        ckpt_path = result.checkpoint.path if result.checkpoint else None
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as d:
                log_final_artifacts(client, run_id, Path(d), config_text, wall)
        else:
            log_final_artifacts(client, run_id, None, config_text, wall)
    return TrainOutcome(run_id, exp_id, uri, dict(result.metrics or {}), checkpoint_path=ckpt_path, wall_s=wall)


def _one_line(err: BaseException) -> str:
    """The innermost cause's message, on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    last = [line for line in text if line.strip()][-1] if text else type(err).__name__
    return f"{type(err).__name__}: {last}"[:500]

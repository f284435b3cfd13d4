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
from hardseg.errors import HardsegError, NonFiniteLoss, TrainingError
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
    if cfg.model.pretrained not in ("none", "imagenet"):
        cfg.model.pretrained = str((base / cfg.model.pretrained).resolve())
    if cfg.model.init_from:
        cfg.model.init_from = fetch_init_from(cfg.model.init_from, cfg, base)
    return cfg


def fetch_init_from(location: str, cfg: RunConfig, base: Path) -> str:
    """``model.init_from`` as a local file: a path made absolute, or an MLflow ``runs:/RUN_ID/PATH``
    (or other artifact URI) downloaded once on the driver into ``<storage_path>/init_from/``
    (a local storage path; a temporary folder otherwise). A folder (``runs:/ID/model``) means
    its ``model_export.pt``."""
    from hardseg.trainables.loop import EXPORT_FILE

    if "://" not in location and not location.startswith("runs:/"):
        return str((base / location).resolve())
    import tempfile

    from mlflow.artifacts import download_artifacts

    storage = cfg.ray.storage_path
    root = Path(storage) / "init_from" if "://" not in storage else Path(tempfile.mkdtemp(prefix="hardseg-init-"))
    dest = root / location.replace("://", "_").replace(":/", "_").replace("/", "_")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(download_artifacts(artifact_uri=location, dst_path=str(dest),
                                        tracking_uri=tracking.resolve_tracking_uri(cfg.tracking.uri)))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HardsegError(f"model.init_from: cannot fetch {location}: {msg} (give runs:/RUN_ID/model/"
                           f"{EXPORT_FILE} of an existing run, or a local file)") from None
    if local.is_dir():
        found = sorted(local.rglob(EXPORT_FILE))
        if not found:
            raise HardsegError(f"model.init_from: {location} holds no {EXPORT_FILE}")
        local = found[0]
    return str(local)


@dataclass
class PreparedData:
    """What the driver's checks found: the datasets' lineage for MLflow, and what the weight files gave."""

    lineage: list = field(default_factory=list)  # hardseg.data.lineage.Lineage records
    weight_reports: list = field(default_factory=list)  # hardseg.models.pretrained.LoadReport


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Generate the synthetic set once on the driver, or check a real dataset,
    so that workers neither race to generate it nor fail on a bad file later;
    then check the strategies' settings and the weight files (``model.pretrained``,
    ``model.init_from``) against the model and the dataset, and print once what
    the weight files give (loaded, missing and unexpected keys).

    Returns the lineage (:class:`hardseg.data.lineage.Lineage`) of the training,
    validation and test splits and of every evaluation domain, and the weight
    files' :class:`~hardseg.models.pretrained.LoadReport` s.
    """
    from hardseg.data import available_splits, build_dataset, resolve_root
    from hardseg.data.domains import build_domain, parse_domains
    from hardseg.data.lineage import derived, lineage
    from hardseg.trainables.loop import check_strategies_fit

    splits = available_splits(cfg.data)
    domains = parse_domains(cfg.data.eval_domains)  # checks the specs and their metric names
    for split in ["train", "val", *(d.split for d in domains if d.dataset is None)]:
        if split not in splits:
            raise HardsegError(f"data.eval_domains: unknown split '{split}' for dataset '{cfg.data.dataset}'; "
                               f"available: {', '.join(splits)}")
    test = [cfg.data.test_split] if cfg.data.test_split else []
    if test and (test[0] not in splits or test[0] in ("train", "val")):
        raise HardsegError(f"data.test_split: '{test[0]}' is not a held-out split of dataset '{cfg.data.dataset}' "
                           f"(available: {', '.join(s for s in splits if s not in ('train', 'val')) or 'none'})")
    real = cfg.data.dataset != "synthetic"
    root = resolve_root(cfg.data)
    own: dict[str, object] = {}  # split of the training set -> its lineage
    records = []
    for split, context in [("train", "training"), ("val", "validation"), *((t, "test") for t in test)]:
        source = build_dataset(cfg.data, split, train=False).source
        if real:
            source.validate()
        own[split] = lineage(source, f"{cfg.data.dataset}:{split}", context, cfg.data.dataset, root)
        records.append(own[split])
    for domain in domains:
        if domain.dataset is None and domain.split not in own:
            source = build_dataset(cfg.data, domain.split, train=False).source
            if real:
                source.validate()
            own[domain.split] = lineage(source, f"{cfg.data.dataset}:{domain.split}", "evaluation",
                                        cfg.data.dataset, root)
        if domain.dataset is None:  # the training set's split, maybe corrupted: no second pass over its files
            records.append(derived(own[domain.split], domain.name, domain.corruption))
        else:  # a path spec: same label space, readable files
            ds = build_domain(cfg.data, domain)
            ds.validate()
            records.append(lineage(ds.source, domain.name, "evaluation", domain.dataset, Path(domain.root),
                                   variant=domain.variant))
    reports = check_strategies_fit(cfg)
    for report in reports:
        print(f"[hardseg] {report.summary()}", flush=True)
    return PreparedData(records, reports)


def model_tags(cfg: RunConfig, reports: list | None = None) -> dict[str, str]:
    """The model's encoder, weights and the input normalisation of the run (data/transforms.py,
    the weights' recipe: models/pretrained.py), plus what each weight file gave."""
    from hardseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    tags = {"hardseg.encoder": cfg.model.encoder or "", "hardseg.pretrained": cfg.model.pretrained,
            "hardseg.normalisation": f"mean={list(IMAGENET_MEAN)} std={list(IMAGENET_STD)}"}
    for report in reports or []:
        tags.update(report.tags())
    return tags


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
        # which split each reported number comes from: best epoch and sweeps use val; test/* is held out
        "hardseg.selection_split": "val",
        "hardseg.test_split": cfg.data.test_split or "none",
        "hardseg.seed": str(cfg.seed),
        "git_commit": git_commit(Path(__file__).parent),
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "python_version": _platform.python_version(),
        "mlflow.runName": cfg.name,
        **model_tags(cfg),
    }


def start_run(cfg: RunConfig, config_text: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, lineage: list | None = None
              ) -> tuple[tracking.MlflowClient, str, str, str]:
    """Create the MLflow run with params, tags, the config artifact and the datasets' lineage."""
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
    tracking.log_lineage(client, run_id, lineage or [])
    return client, uri, exp_id, run_id


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    """What one training worker reserves: ``ray.cpus_per_worker`` CPUs and, with ``ray.use_gpu``,
    ``ray.gpus_per_worker`` GPUs (a fraction lets trials share a GPU). The one place for both the
    Tune trial resources, Train's ``ScalingConfig`` and the sweep's concurrency."""
    res = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        res["GPU"] = cfg.ray.gpus_per_worker
    return res


def scaling_config(cfg: RunConfig):
    """Ray Train's ``ScalingConfig``: ``ray.num_workers`` workers of :func:`worker_resources` each."""
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                         resources_per_worker=worker_resources(cfg))


def make_trainer(cfg: RunConfig, run_id: str, uri: str, *, name: str | None = None,
                 callbacks: list | None = None, train_loop=None):
    """The ``TorchTrainer`` of one run: DDP workers, checkpoints under ``cfg.ray.storage_path``,
    each report logged to MLflow run ``run_id`` by a callback on the Train controller.
    ``train_loop``: the workers' function (default ``ray_worker.train_loop_per_worker``; a test's own)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    from hardseg.trainables.ray_worker import train_loop_per_worker

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
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[tracking.ray_callback(uri, run_id), *(callbacks or [])],
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train's print patch would echo every progress line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def raise_if_run_failed(client: tracking.MlflowClient, run_id: str) -> None:
    """A worker's failure report (NaN loss) sets ``hardseg.error``; raise it again as NonFiniteLoss."""
    error = client.get_run(run_id).data.tags.get("hardseg.error")
    if error:
        raise NonFiniteLoss.of_run(run_id, error)


def log_final_artifacts(client: tracking.MlflowClient, run_id: str, checkpoint_dir: Path | None,
                        config_text: str, wall_s: float) -> None:
    """The exported model of the last checkpoint (``model_export.pt`` and, with ``tracking.log_model``,
    the same model in MLflow's format, :mod:`hardseg.platform.export`), its config and the run's wall time."""
    from hardseg.trainables.loop import EXPORT_FILE

    export = Path(checkpoint_dir) / EXPORT_FILE if checkpoint_dir is not None else None
    if export is not None and export.is_file():
        client.log_artifact(run_id, str(export), EXPORT_ARTIFACT_DIR)
        if yaml.safe_load(config_text).get("tracking", {}).get("log_model", True):
            from hardseg.platform.export import log_mlflow_model

            try:
                log_mlflow_model(client, run_id, export)
            except Exception as exc:  # the run's results stand; say why its MLflow model is missing
                why = _one_line(exc)
                tracking.set_tags(client, run_id, {"hardseg.model_log_error": why})
                print(f"[hardseg] warning: the MLflow model of run {run_id} was not logged: {why}", flush=True)
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


def run_training(cfg: RunConfig, *, workdir: Path | None = None, tags: dict[str, str] | None = None,
                 train_loop=None) -> TrainOutcome:
    """Validate, prepare data, then train with ``cfg.ray.num_workers`` DDP workers
    (``train_loop``: the workers' function, see :func:`make_trainer`).

    Raises:
        HardsegError: bad input (before anything is logged) or a failed run
            (after the MLflow run was closed as FAILED with the reason).
    """
    from hardseg.platform.cluster import ensure_ray

    init_uri = cfg.model.init_from
    cfg = resolve_paths(cfg, workdir)
    prepared = prepare_data(cfg)
    ensure_ray(cfg.ray)
    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    for msg in strategy_warning_tags(cfg).values():
        print(f"[hardseg] warning: {msg}", flush=True)
    tags = {**model_tags(cfg, prepared.weight_reports), **({"hardseg.init_from.uri": init_uri} if init_uri else {}),
            **(tags or {})}
    client, uri, exp_id, run_id = start_run(cfg, config_text, tags, lineage=prepared.lineage)
    print(f"[hardseg] MLflow run {run_id} in experiment '{cfg.tracking.experiment}' at {uri}", flush=True)

    start = time.perf_counter()
    with RunCloser(client, run_id):
        result = make_trainer(cfg, run_id, uri, train_loop=train_loop).fit()
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

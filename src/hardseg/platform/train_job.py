"""``hardseg train``: one DDP training run on Ray Train, recorded as one MLflow run.

Order matters for "nothing half-written": the config is validated and the
dataset prepared and checked (:mod:`hardseg.platform.prepare`) *before* the
MLflow run is opened; from then on :class:`~hardseg.platform.runs.RunCloser`
ends it in a terminal state (FINISHED, FAILED or KILLED) with the reason.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardseg import keys, timeline
from hardseg.config import HardsegConfig
from hardseg.platform import runs, tracking
from hardseg.platform.cluster import check_resources, ensure_ray, precheck_local, run_need, wait_for_resources
from hardseg.platform.prepare import prepare_data, prepare_run, resume_config
from hardseg.platform.trainer import log_result, make_trainer


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_path: str | None = None
    wall_s: float = 0.0


def run_training(cfg: HardsegConfig, *, workdir: Path | None = None, tags: dict[str, str] | None = None,
                 train_loop=None) -> TrainOutcome:
    """Prepare (:func:`hardseg.platform.prepare.prepare_run`, as ``--dry-run`` does), then train with
    ``cfg.ray.num_workers`` DDP workers.

    ``train_loop``: the function each Ray Train worker runs (default
    :func:`hardseg.trainables.ray_worker.train_loop_per_worker`; tests pass one that injects faults).

    Raises:
        HardsegError: bad input (before anything is logged) or a failed run
            (after the MLflow run was closed as FAILED with the reason).
    """
    init_uri = cfg.model.init_from
    # no GPU here for ray.use_gpu: one line before anything starts
    prepared = prepare_run(cfg, workdir, precheck=lambda c: precheck_local(run_need(c), c.ray))
    cfg = prepared.cfg
    timeline.mark("driver: data prepared")
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    client = tracking.MlflowClient(uri)
    # The tracking store (on first use: a new SQLite database and its tables, seconds) and the experiment
    # are set up in a thread while ray.init waits for Ray's processes to start; no run is opened before
    # both have succeeded, so a failure of either still leaves nothing in MLflow.
    with ThreadPoolExecutor(1, thread_name_prefix="hardseg-mlflow") as pool:
        experiment = pool.submit(tracking.get_or_create_experiment, client, cfg.tracking.experiment, uri)
        ensure_ray(cfg.ray)
        exp_id = experiment.result()
    need = run_need(cfg)
    missing = check_resources(need)  # a request the cluster can never satisfy: one line, no run
    config_yaml = runs.config_text(cfg)
    for line in prepared.warning_lines():
        print(line, flush=True)
    run_id = runs.open_run(
        client, exp_id, cfg.name, keys.TRAIN,
        tags={**runs.training_tags(cfg, prepared.warnings), **runs.model_tags(cfg, prepared.data.weight_reports),
              **({keys.INIT_FROM_URI: init_uri} if init_uri else {}), **(tags or {})},
        params=cfg.flat(), texts={"config.yaml": config_yaml}, lineage=prepared.data.lineage)
    timeline.mark("driver: MLflow run opened")
    print(f"[hardseg] MLflow run {run_id} in experiment '{cfg.tracking.experiment}' at {uri}", flush=True)
    return _train(cfg, client, run_id, exp_id, uri, config_yaml, train_loop, need=need, missing=missing)


def resume_training(run_id: str, *, config_path: str | None = None, overrides: list[str] | None = None,
                    tracking_uri: str | None = None, workdir: Path | None = None, train_loop=None) -> TrainOutcome:
    """``hardseg train --resume RUN_ID``: continue a killed or failed run in the same MLflow run.

    The Train run's folder (``<ray.storage_path>/train-<run id>``) is restored from its latest
    checkpoint (model, optimiser, schedule, grad scaler, RNG states, sampler position; the best model
    from its one copy beside the checkpoints), and the MLflow run goes on from the steps it has
    (:func:`hardseg.platform.tracking.last_steps`). Bad input (:func:`hardseg.platform.prepare.resume_config`)
    stops before the run is touched.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    client = tracking.MlflowClient(uri)
    cfg = resume_config(client, run_id, config_path, list(overrides or []), workdir)
    prepare_data(cfg)
    ensure_ray(cfg.ray)
    need = run_need(cfg)
    missing = check_resources(need)  # before the run is reopened
    config_yaml = runs.config_text(cfg)
    exp_id = client.get_run(run_id).info.experiment_id
    logged = tracking.last_steps(client, run_id)
    runs.reopen_run(client, run_id)
    print(f"[hardseg] resuming MLflow run {run_id} after step {logged['report']} (its unit) at {uri}", flush=True)
    return _train(cfg, client, run_id, exp_id, uri, config_yaml, train_loop, logged, need=need, missing=missing)


def _train(cfg: HardsegConfig, client, run_id: str, exp_id: str, uri: str, config_yaml: str, train_loop,
           logged: dict[str, int] | None = None, *, need, missing: str | None) -> TrainOutcome:
    """Fit the run's TorchTrainer inside the MLflow run, which ends FINISHED or FAILED with the reason;
    on an autoscaling cluster first wait for ``need`` (``missing``: :func:`~hardseg.platform.cluster.check_resources`)."""
    start = time.perf_counter()
    monitor = tracking.system_metrics_monitor(uri, run_id) if cfg.tracking.system_metrics else None
    try:
        with runs.RunCloser(client, run_id):
            wait_for_resources(need, missing, cfg.ray.resource_timeout_s)  # an autoscaling cluster's bounded wait
            timeline.mark("driver: fit")
            result = make_trainer(cfg, run_id, uri, train_loop=train_loop, logged=logged).fit()
            timeline.mark("driver: fit returned")
            # result.metrics belong to the last checkpoint; an error report carries no
            # checkpoint, so the MLflow callback's error tag is the source of truth.
            runs.raise_if_run_failed(client, run_id)
            wall = time.perf_counter() - start
            log_result(client, run_id, result, config_yaml, wall)
            timeline.mark("driver: model exported and uploaded")
        timeline.mark("driver: run closed")
    finally:
        if monitor is not None:
            monitor.finish()
    ckpt_path = result.checkpoint.path if result.checkpoint else None
    return TrainOutcome(run_id, exp_id, uri, dict(result.metrics or {}), checkpoint_path=ckpt_path, wall_s=wall)

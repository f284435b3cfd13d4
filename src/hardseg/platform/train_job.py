"""``hardseg train``: one DDP training run on Ray Train, recorded as one MLflow run.

Order matters for "nothing half-written": the config is validated and the
dataset prepared and checked (:mod:`hardseg.platform.prepare`) *before* the
MLflow run is opened; from then on :class:`~hardseg.platform.runs.RunCloser`
ends it in a terminal state (FINISHED, FAILED or KILLED) with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardseg import keys
from hardseg.config import RunConfig
from hardseg.platform import runs, tracking
from hardseg.platform.cluster import check_resources, ensure_ray, precheck_local, run_need, wait_for_resources
from hardseg.platform.prepare import prepare_data, resolve_paths
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


def run_training(cfg: RunConfig, *, workdir: Path | None = None, tags: dict[str, str] | None = None,
                 train_loop=None) -> TrainOutcome:
    """Validate, prepare data, then train with ``cfg.ray.num_workers`` DDP workers.

    ``train_loop``: the function each Ray Train worker runs (default
    :func:`hardseg.trainables.ray_worker.train_loop_per_worker`; tests pass one that injects faults).

    Raises:
        HardsegError: bad input (before anything is logged) or a failed run
            (after the MLflow run was closed as FAILED with the reason).
    """
    init_uri = cfg.model.init_from
    precheck_local(run_need(cfg), cfg.ray)  # no GPU here for ray.use_gpu: one line before anything starts
    cfg = resolve_paths(cfg, workdir)
    prepared = prepare_data(cfg)
    ensure_ray(cfg.ray)
    need = run_need(cfg)
    missing = check_resources(need)  # a request the cluster can never satisfy: one line, no run
    config_yaml = runs.config_text(cfg)
    for msg in runs.strategy_warning_tags(cfg).values():
        print(f"[hardseg] warning: {msg}", flush=True)
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    client = tracking.MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(client, cfg.tracking.experiment, uri)
    run_id = runs.open_run(
        client, exp_id, cfg.name, keys.TRAIN,
        tags={**runs.training_tags(cfg), **runs.model_tags(cfg, prepared.weight_reports),
              **({keys.INIT_FROM_URI: init_uri} if init_uri else {}), **(tags or {})},
        params=cfg.flat(), texts={"config.yaml": config_yaml}, lineage=prepared.lineage)
    print(f"[hardseg] MLflow run {run_id} in experiment '{cfg.tracking.experiment}' at {uri}", flush=True)

    start = time.perf_counter()
    with runs.RunCloser(client, run_id):
        wait_for_resources(need, missing, cfg.ray.resource_timeout_s)  # an autoscaling cluster's bounded wait
        result = make_trainer(cfg, run_id, uri, train_loop=train_loop).fit()
        # result.metrics belong to the last checkpoint; an error report carries no
        # checkpoint, so the MLflow callback's error tag is the source of truth.
        runs.raise_if_run_failed(client, run_id)
        wall = time.perf_counter() - start
        log_result(client, run_id, result, config_yaml, wall)
    ckpt_path = result.checkpoint.path if result.checkpoint else None
    return TrainOutcome(run_id, exp_id, uri, dict(result.metrics or {}), checkpoint_path=ckpt_path, wall_s=wall)

"""One sweep trial: a Ray Tune function trainable that trains one RunConfig.

Each trial is one MLflow child run of the sweep's parent run (tag
``mlflow.parentRunId``), found again by its Tune trial id when a resumed
sweep restarts the trial, so a trial never gets two runs. Training runs

* **in the trial's own process** when the trial has one worker (no
  TorchTrainer launch: the per-trial overhead is Tune's alone), checkpoints
  reported to Tune so a restored sweep resumes the trial's epochs;
* **as a TorchTrainer** with ``ray.num_workers`` DDP workers otherwise; its
  Train run is named ``train-<trial id>`` so a restored trial resumes from
  its last Train checkpoint.

A failing trial (exception, NaN/inf loss) closes its run FAILED with the
reason in ``hardseg.error`` and raises, so Tune marks it ERROR and Optuna
FAIL; the sweep goes on. A trial stopped by the scheduler dies without
running any code, so the sweep driver closes its run (``sweep.close_open_runs``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardseg.errors import FAILURE_KEY, NonFiniteLoss
from hardseg.platform import tracking
from hardseg.platform.train_job import (RunCloser, TrialStopped, log_final_artifacts, make_trainer, raise_if_run_failed,
                                        run_tags)

TRIAL_TAG = "hardseg.trial_id"
SWEEP_TAG = "hardseg.sweep"
NODE_TAG = "hardseg.node_id"
CONFIG_KEY = "config"  # a grid key naming one of TrialSpec.configs (tag sampled.config)


@dataclass
class TrialSpec:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    sweep_name: str
    space: dict[str, Any]  # SearchSpace.to_dict()
    config_path: str | None
    overrides: list[str]  # user --set overrides, then resolved paths and tracking
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metrics: list[str]  # the searcher's / scheduler's metrics: only reports that have them go to Tune
    kind: str = "sweep"  # or "ablation"
    in_process: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)
    # Named configurations a grid picks with its ``config`` key ({label: [KEY=VALUE, ...]}), applied
    # after ``overrides``: ``hardseg study`` confirms searched configurations this way.
    configs: dict[str, list[str]] = field(default_factory=dict)


def trial_run_name(sampled: dict[str, Any]) -> str:
    """A child run's name in the MLflow UI: what differs between the trials, not the trial id.

    The strategies first, then each sampled parameter by its last path component with
    two significant digits, the seed last: ``hl · seed 1`` (an ablation cell),
    ``hl lam=0.03 lr=0.0031`` (a search trial). The trial id stays in ``hardseg.trial_id``.
    """
    strategies = sampled.get("strategies")
    if isinstance(strategies, (list, tuple)):
        strategies = "+".join(map(str, strategies))
    parts = [str(strategies)] if strategies is not None else []
    for key in sorted(k for k in sampled if k not in ("strategies", "seed")):
        value = sampled[key]
        parts.append(f"{key.split('.')[-1]}=" + (f"{value:.2g}" if isinstance(value, float) else str(value)))
    name = " ".join(parts) or "trial"
    return f"{name} · seed {sampled['seed']}" if "seed" in sampled else name


def find_trial_run(client: tracking.MlflowClient, spec: TrialSpec, trial_id: str) -> str | None:
    runs = client.search_runs([spec.experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"), max_results=2)
    return runs[0].info.run_id if runs else None


def finished_run_metrics(client: tracking.MlflowClient, spec: TrialSpec, trial_id: str) -> dict[str, float] | None:
    """The final metrics of the trial's run if it already FINISHED, else None. A trial closes its run
    before its last report to Tune, so a sweep stopped in between restores the trial as unfinished;
    it then reports these metrics instead of training again (a resumed sweep repeats no finished trial)."""
    run_id = find_trial_run(client, spec, trial_id)
    if run_id is None:
        return None
    run = client.get_run(run_id)
    return numeric(dict(run.data.metrics)) if run.info.status == "FINISHED" else None


def node_tags() -> dict[str, str]:
    """Where the trial runs: its Ray node id and host name (tags ``hardseg.node_id``, ``hardseg.hostname``)."""
    import socket

    import ray

    return {NODE_TAG: ray.get_runtime_context().get_node_id(), "hardseg.hostname": socket.gethostname()}


def open_trial_run(client: tracking.MlflowClient, spec: TrialSpec, cfg, sampled: dict[str, Any],
                   trial_id: str, config_text: str) -> str:
    """The trial's child run: reopened if a restored sweep restarts the trial, else created."""
    run_id = find_trial_run(client, spec, trial_id)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        tracking.set_tags(client, run_id, {"hardseg.restarts": str(_restarts(client, run_id) + 1), **node_tags()})
        return run_id
    tags = {**run_tags(cfg), **spec.extra_tags, **node_tags(), "hardseg.kind": f"{spec.kind}-trial",
            SWEEP_TAG: spec.sweep_name,
            TRIAL_TAG: trial_id, "mlflow.parentRunId": spec.parent_run_id}
    name = trial_run_name(sampled)
    tags["mlflow.runName"] = name
    run_id = client.create_run(spec.experiment_id, run_name=name, tags=tags).info.run_id
    tracking.log_params(client, run_id, cfg.flat())
    tracking.set_tags(client, run_id, {f"sampled.{k}": v for k, v in sampled.items()})
    client.log_text(run_id, config_text, "config.yaml")
    return run_id


def _restarts(client: tracking.MlflowClient, run_id: str) -> int:
    return int(client.get_run(run_id).data.tags.get("hardseg.restarts", "0"))


def _for_tune(metrics: dict[str, Any], wanted: list[str], final_epoch: int) -> dict[str, Any] | None:
    """Reports Tune may see during training: numeric, with every searcher metric (Tune aborts the
    sweep otherwise), and not the final epoch's, which the trial reports itself after closing its
    run (Tune stops a trial as soon as it sees its last result)."""
    if FAILURE_KEY in metrics or any(m not in metrics for m in wanted) or int(metrics.get("epoch", 0)) >= final_epoch:
        return None
    return numeric(metrics)


def numeric(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tune_forwarder(wanted: list[str], final_epoch: int):
    """Ray Tune's ``TuneReportCallback`` for the reports :func:`_for_tune` lets through."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Forward(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            kept = _for_tune(metrics[0] if metrics else {}, wanted, final_epoch)
            if kept is not None:
                super().after_report(run_context, [kept], checkpoint)

    return _Forward()


def last_epoch(client: tracking.MlflowClient, run_id: str) -> int:
    history = client.get_metric_history(run_id, "train/loss")
    return max((m.step for m in history), default=0)


def stopped_by_tune(err: BaseException) -> bool:
    """Tune stopping a trial removes its placement group, which kills the Train controller inside it."""
    while err is not None:
        if "placement group was removed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def run_trial(sampled: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable (``tune.with_parameters(run_trial, spec=...)``)."""
    import logging

    from ray import tune

    from hardseg.search_spaces import SearchSpace

    for name in ("ray.tune", "ray.train"):  # one "Checkpoint successfully created" line per epoch otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    space = SearchSpace.from_dict(spec.space, source=f"sweep {spec.sweep_name}")
    chosen = spec.configs[sampled[CONFIG_KEY]] if CONFIG_KEY in sampled else []
    cfg = space.run_config({k: v for k, v in sampled.items() if k != CONFIG_KEY}, spec.config_path,
                           [*spec.overrides, *chosen, f"name={spec.sweep_name}-{trial_id}"])
    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    client = tracking.MlflowClient(spec.tracking_uri)
    done = finished_run_metrics(client, spec, trial_id)
    if done is not None:  # restored after its run FINISHED (Ctrl-C before Tune saw the final report)
        tune.report({**done, "epoch": cfg.train.epochs})
        return
    run_id = open_trial_run(client, spec, cfg, sampled, trial_id, config_text)
    epochs = cfg.train.epochs
    start = time.perf_counter()
    with RunCloser(client, run_id):
        if cfg.ray.num_workers == 1 and spec.in_process:
            final = _fit_in_process(cfg, spec, client, run_id, config_text, start)
        else:
            trainer = make_trainer(cfg, run_id, spec.tracking_uri, name=f"train-{trial_id}",
                                   callbacks=[tune_forwarder(spec.metrics, epochs)])
            try:
                result = trainer.fit()
            except Exception as err:
                if stopped_by_tune(err):
                    raise TrialStopped(f"stopped by the scheduler after epoch {last_epoch(client, run_id)} "
                                       f"of {epochs}") from None
                raise
            raise_if_run_failed(client, run_id)
            final = numeric(dict(result.metrics or {}))
            wall = time.perf_counter() - start
            if result.checkpoint is not None:
                with result.checkpoint.as_directory() as d:
                    log_final_artifacts(client, run_id, Path(d), config_text, wall)
            else:
                log_final_artifacts(client, run_id, None, config_text, wall)
    tune.report(final)  # the run is closed: Tune may stop the trial now


def _fit_in_process(cfg, spec: TrialSpec, client: tracking.MlflowClient, run_id: str, config_text: str,
                    start: float) -> dict[str, Any]:
    """Train in the trial's process (:class:`~hardseg.platform.tune_session.TuneSession`: each epoch to
    MLflow and, with its checkpoint, to Tune), then log the last checkpoint's final artifacts.

    Returns the final epoch's metrics (for Tune, once the run is closed). A non-finite loss
    raises NonFiniteLoss with the same message as a TorchTrainer run's (``raise_if_run_failed``).
    """
    # local: torch and Ray Tune, loaded in the trial's process only (not on the CLI's start-up path)
    from hardseg.platform.tune_session import TuneSession
    from hardseg.trainables.loop import fit

    epochs = cfg.train.epochs
    logger = tracking.MLflowEpochLogger(spec.tracking_uri, run_id)
    with TuneSession(logger, lambda m: _for_tune(m, spec.metrics, epochs), epochs,
                     device="cuda" if cfg.ray.use_gpu else "cpu") as session:
        try:
            fit(cfg, session)
        except NonFiniteLoss as err:
            raise NonFiniteLoss.of_run(run_id, str(err)) from None
        log_final_artifacts(client, run_id, session.kept, config_text, time.perf_counter() - start)
    return numeric(session.last)

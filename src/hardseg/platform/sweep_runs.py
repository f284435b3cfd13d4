"""A sweep's MLflow runs: the parent run, closing trials' runs, the best trial and the summary.

One parent run per sweep; each trial's child run carries ``mlflow.parentRunId``
(:mod:`hardseg.platform.trial` creates and closes it). Runs of trials that Tune
stopped are closed here, after ``Tuner.fit``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import yaml

from hardseg import keys
from hardseg.platform import runs, tracking
from hardseg.search_spaces import SearchSpace


def start_parent_run(client, exp_id: str, name: str, kind: str, space: SearchSpace, base_cfg,
                     extra_params: dict[str, Any], extra_tags: dict[str, str] | None = None, lineage: list | None = None,
                     environment: dict[str, str] | None = None) -> str:
    """The sweep's parent run; ``extra_tags`` may nest it (``mlflow.parentRunId``, as ``hardseg nightly`` does).
    ``environment``: :func:`hardseg.platform.runs.environment_tags`, as its trials get them."""
    tags = {k: v for k, v in runs.training_tags(base_cfg).items() if k not in (keys.SEED, keys.STRATEGIES)}
    params = {f"{keys.SPACE_PREFIX}{p.path}": json.dumps(p.to_dict()) for p in space.params.values()}
    params.update({f"sweep.{k}": v for k, v in space.sweep.model_dump(mode="json").items()})
    params.update({f"base.{k}": v for k, v in base_cfg.flat().items()})
    params.update(extra_params)
    return runs.open_run(client, exp_id, name, kind, tags={**tags, keys.SWEEP: name, **(extra_tags or {})},
                         params=params, lineage=lineage, environment=environment,
                         texts={"space.yaml": yaml.safe_dump(space.to_dict(), sort_keys=False),
                                "base_config.yaml": yaml.safe_dump(base_cfg.model_dump(mode="json"), sort_keys=False)})


def child_runs(client, exp_id: str, parent_run_id: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000)


def close_open_runs(client, exp_id: str, parent_run_id: str, trials: list, max_epochs: int, interrupted: bool,
                    resume_hint: str, unit: str = "epoch") -> None:
    """Close the child runs their trials could not close (stopped by ASHA, Ctrl-C, a dead process);
    ``max_epochs``: the trials' length in ``unit`` (epochs or iterations)."""
    by_id = {t.trial_id: t for t in trials}
    for run in child_runs(client, exp_id, parent_run_id):
        if run.info.status != "RUNNING":
            continue
        trial = by_id.get(run.data.tags.get(keys.TRIAL_ID))
        epoch = int((trial.last_result or {}).get(unit, 0)) if trial is not None else 0
        if trial is not None and trial.status == "ERROR":
            status, reason = "FAILED", f"the trial's process died after {unit} {epoch}"
        elif interrupted and (trial is None or trial.status != "TERMINATED"):
            status, reason = "KILLED", f"sweep interrupted after {unit} {epoch}; {resume_hint}"
        else:
            status, reason = "KILLED", f"stopped by the ASHA scheduler after {unit} {epoch} of {max_epochs}"
        # The run ended with its last logged epoch, not now.
        history = client.get_metric_history(run.info.run_id, f"{keys.TRAIN_PREFIX}loss")
        end_ms = max((m.timestamp for m in history), default=None)
        runs.close_run(client, run.info.run_id, status, reason, end_time=end_ms)


def best_trial(client, exp_id: str, parent_run_id: str, metric: str, mode: str, max_epochs: int):
    """The best FINISHED child run (trials that ran every epoch), or None."""
    runs = [r for r in child_runs(client, exp_id, parent_run_id)
            if r.info.status == "FINISHED" and metric in r.data.metrics]
    if not runs:
        return None
    return (max if mode == "max" else min)(runs, key=lambda r: r.data.metrics[metric])


def log_summary(client, exp_id: str, parent_run_id: str, space: SearchSpace, max_epochs: int,
                final: bool = True) -> dict[str, Any]:
    """Trial counts by status and the best trial; its params go to the parent run only when the
    sweep is complete (MLflow params cannot change, and a resumed sweep may find a better one)."""
    runs = child_runs(client, exp_id, parent_run_id)
    statuses = dict(Counter(r.info.status for r in runs))
    tracking.log_metrics(client, parent_run_id, {f"trials_{k.lower()}": v for k, v in statuses.items()} |
                         {"trials": len(runs)})
    best = best_trial(client, exp_id, parent_run_id, space.sweep.metrics[0], space.sweep.modes[0], max_epochs)
    info: dict[str, Any] = {"statuses": statuses, "best": None}
    if best is not None:
        prefix = keys.SAMPLED_PREFIX
        sampled = {k[len(prefix):]: v for k, v in best.data.tags.items() if k.startswith(prefix)}
        if final:
            tracking.log_params(client, parent_run_id, {f"{keys.BEST_PARAM_PREFIX}{k}": v for k, v in sampled.items()})
        tracking.log_metrics(client, parent_run_id, {f"{keys.BEST_PREFIX}{k}": v for k, v in best.data.metrics.items()
                                                     if k.startswith((keys.VAL_PREFIX, f"{keys.TRAIN_PREFIX}loss"))})
        tracking.set_tags(client, parent_run_id, {keys.BEST_RUN_ID: best.info.run_id,
                                                  keys.BEST_TRIAL: best.data.tags.get(keys.TRIAL_ID, "")})
        info["best"] = {"run_id": best.info.run_id, "trial_id": best.data.tags.get(keys.TRIAL_ID), "params": sampled,
                        "metrics": {m: best.data.metrics.get(m) for m in space.sweep.metrics}}
    return info

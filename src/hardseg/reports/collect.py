"""Read a sweep or an ablation back from MLflow: its parent run and one row per trial run.

Only MLflow is read (no Ray, no torch). What a sweep logs is described in
:mod:`hardseg.platform.sweep` (parent run) and :mod:`hardseg.platform.trial`
(child runs); :func:`runs_frame` flattens the child runs into a DataFrame that
:mod:`hardseg.reports.tables` turns into statistics.

One model per row: every figure of a row comes from the checkpoint its run selected, the
best-by-val one (:func:`selected_checkpoint`). The training loop logs that model's val
metrics as ``best/val/<metric>`` with its step (``best/epoch``, or ``best/iteration``
under an iteration schedule) and evaluates the same model on every domain, ``test/``
and robustness; a row's ``val/<metric>`` is that ``best/val/<metric>``, never the
last epoch's. A run without that record (stopped by a scheduler, failed, logged by an
older version) gets its best val step from its ``val/miou`` history and the other
``val/`` metrics at that step.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.errors import HardsegError

PARAM_PREFIX = "param:"
BASE_COLUMNS = ["run_id", "trial_id", "strategies", "seed", "status", "reason", "epochs", "checkpoint",
                "checkpoint_step", "checkpoint_unit"]
PAGE = 1000
SELECT_METRIC = keys.MIOU  # the val metric a run's checkpoint is selected on (trainables.best.BEST_METRIC)
BEST_BY_VAL = "best-by-val"
FROM_HISTORY = "best-by-val (from its val history)"
NEVER_EVALUATED = "none (never evaluated)"
STEP_UNITS = ("iteration", "epoch")  # best/<unit>: the selected checkpoint's step, iteration schedules first


class ReportError(HardsegError, LookupError):
    """No such store, experiment, sweep or metric; the message says what exists."""


def open_client(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """A client on ``tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``./mlruns/mlflow.db``.

    A SQLite store must already exist (reading must not create an empty one).
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).resolve()
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path}; pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
        uri = f"sqlite:///{path}"
    return MlflowClient(uri), uri


def _search(client: MlflowClient, exp_id: str, filter_string: str) -> list[Run]:
    """Every run matching ``filter_string``, page by page."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _is_parent(run: Run) -> bool:
    """A sweep's or an ablation's parent run, also one nested under a study or a nightly (its trials'
    kind is ``<kind>-trial``)."""
    return run.data.tags.get(keys.KIND) in keys.PARENT_KINDS


def sweep_names(client: MlflowClient, exp_id: str) -> list[str]:
    """Names of the sweeps and ablations in the experiment, newest first."""
    runs = [r for kind in keys.PARENT_KINDS for r in _search(client, exp_id, f"tags.`{keys.KIND}` = '{kind}'")]
    runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return list(dict.fromkeys(r.data.tags.get(keys.SWEEP, r.info.run_id) for r in runs if _is_parent(r)))


def find_parent(client: MlflowClient, name_or_run_id: str, experiment: str = "hardseg") -> Run:
    """The parent run of the sweep or ablation named ``name_or_run_id`` (tag ``hardseg.sweep``), or
    with that run id; the newest one if a name was used twice."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ReportError(f"no MLflow experiment '{experiment}' in this store (experiments: {names})")
    found: list[Run] = []
    if re.fullmatch(r"[\w.+:@-]+", name_or_run_id):  # sweep names are narrower still (sweep.check_name)
        found = [r for r in _search(client, exp.experiment_id, f"tags.`{keys.SWEEP}` = '{name_or_run_id}'")
                 if _is_parent(r)]
    if found:
        return max(found, key=lambda r: r.info.start_time or 0)
    if re.fullmatch(r"[0-9a-f]{32}", name_or_run_id):
        try:
            run = client.get_run(name_or_run_id)
        except MlflowException:
            run = None
        if run is not None and _is_parent(run):
            return run
        if run is not None:
            raise ReportError(f"run {name_or_run_id} is not the parent run of a sweep or an ablation "
                              f"({keys.KIND}={run.data.tags.get(keys.KIND, 'none')})")
    names = sweep_names(client, exp.experiment_id)
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    raise ReportError(f"no sweep or ablation named '{name_or_run_id}' in experiment '{experiment}' "
                      f"(found: {shown or 'none'})")


def child_runs(client: MlflowClient, parent_run: Run) -> list[Run]:
    """The parent's trial runs, oldest first."""
    runs = _search(client, parent_run.info.experiment_id, f"tags.`{keys.PARENT}` = '{parent_run.info.run_id}'")
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _scalar(text: str) -> Any:
    """A tag's text as int or float when it is one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _strategies(run: Run) -> str | None:
    """The run's row label: a study's named configuration (tag ``sampled.config``), else its strategies."""
    config = run.data.tags.get(keys.SAMPLED_PREFIX + "config")
    if config:
        return config
    tag = run.data.tags.get(keys.STRATEGIES)
    if tag:
        return tag
    param = run.data.params.get("strategies")  # str(list) of the flattened config: "['hl', 'ohem']"
    return "+".join(re.findall(r"[\w.-]+", param)) if param else None


def _seed(run: Run) -> int | None:
    text = run.data.tags.get(keys.SEED) or run.data.params.get("seed")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _reason(run: Run) -> str | None:
    tags = run.data.tags
    order = (keys.STOP_REASON, keys.ERROR) if run.info.status == "KILLED" else (keys.ERROR, keys.STOP_REASON)
    return next((tags[k] for k in order if tags.get(k)), None)


def selected_checkpoint(client: MlflowClient, run: Run) -> tuple[str, int | None, str, dict[str, float], int | None]:
    """``(checkpoint, step, unit, val metrics, last val step)`` of the model a run's row reports.

    ``checkpoint``: :data:`BEST_BY_VAL` when the run logged ``best/<unit>`` and ``best/val/*``; else
    :data:`FROM_HISTORY` (the step of the best ``val/miou`` in its history, a tie keeping the
    earlier step as the loop does), or :data:`NEVER_EVALUATED` without any ``val/miou``. ``val
    metrics``: ``{"val/<metric>": value}`` of that checkpoint (empty when never evaluated).
    """
    metrics = run.data.metrics
    select = keys.VAL_PREFIX + SELECT_METRIC
    history = client.get_metric_history(run.info.run_id, select) if select in metrics else []
    last = max((m.step for m in history), default=None)
    best_prefix = keys.BEST_PREFIX + keys.VAL_PREFIX
    logged = {keys.VAL_PREFIX + k[len(best_prefix):]: v for k, v in metrics.items() if k.startswith(best_prefix)}
    for unit in STEP_UNITS:
        step = metrics.get(f"{keys.BEST_PREFIX}{unit}")
        if step is not None and step > 0 and logged:  # a val/* metric the record lacks is no figure of it
            vals = {k: logged.get(k, math.nan) for k in metrics if k.startswith(keys.VAL_PREFIX)} | logged
            return BEST_BY_VAL, int(step), unit, vals, last
    finite = [m for m in history if math.isfinite(m.value)]
    if not finite:
        return NEVER_EVALUATED, None, "epoch", {}, last
    best = max(finite, key=lambda m: (m.value, -m.step))  # the earliest of the best
    vals = {k: v for k, v in metrics.items() if k.startswith(keys.VAL_PREFIX)}
    if best.step != last:  # the latest values are another epoch's: read each at the best step
        for name in vals:
            at = [m.value for m in client.get_metric_history(run.info.run_id, name) if m.step == best.step]
            vals[name] = at[-1] if at else math.nan
    return FROM_HISTORY, int(best.step), "epoch", vals, last


def runs_frame(client: MlflowClient, parent_run: Run) -> pd.DataFrame:
    """One row per trial run of ``parent_run``.

    Columns: ``run_id``, ``trial_id``, ``strategies`` (e.g. ``hl+coarse_to_fine``),
    ``seed`` and ``epochs`` (nullable ``Int64``; ``epochs`` is the last step of
    ``val/miou``), ``status`` (FINISHED, FAILED, KILLED, RUNNING), ``reason``
    (``hardseg.error`` or ``hardseg.stop_reason``), ``checkpoint`` and ``checkpoint_step``
    (``Int64``) with the unit in ``checkpoint_unit`` (:func:`selected_checkpoint`), then every
    metric under its MLflow key (``val/miou``, ``fog-3/miou``, ...; NaN when a run lacks it),
    ``val/*`` those of the selected checkpoint, and every ``sampled.<key>`` tag as ``param:<key>``.
    """
    rows: list[dict[str, Any]] = []
    for run in child_runs(client, parent_run):
        tags = run.data.tags
        checkpoint, step, unit, val, last = selected_checkpoint(client, run)
        row: dict[str, Any] = {
            "run_id": run.info.run_id, "trial_id": tags.get(keys.TRIAL_ID), "strategies": _strategies(run),
            "seed": _seed(run), "status": run.info.status, "reason": _reason(run), "epochs": last,
            "checkpoint": checkpoint, "checkpoint_step": step, "checkpoint_unit": unit,
        }
        row.update(sorted(run.data.metrics.items()))
        row.update(val)  # one model per row: val/* of the selected checkpoint, as its domains and test/*
        row.update({PARAM_PREFIX + k[len(keys.SAMPLED_PREFIX):]: _scalar(v) for k, v in sorted(tags.items())
                    if k.startswith(keys.SAMPLED_PREFIX)})
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in BASE_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
    metric_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS and not c.startswith(PARAM_PREFIX))
    param_cols = sorted(c for c in df.columns if c.startswith(PARAM_PREFIX))
    df = df[BASE_COLUMNS + metric_cols + param_cols].copy()
    for col in ("seed", "epochs", "checkpoint_step"):
        df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                            for v in df[col]], dtype="Int64")
    # astype casts column by column, one block each; copy() joins the blocks (a fragmented frame
    # gets pandas' PerformanceWarning in every report).
    return df.astype({col: float for col in metric_cols}).copy()


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a :func:`runs_frame`."""
    return [c for c in df.columns if c not in BASE_COLUMNS and not c.startswith(PARAM_PREFIX)]

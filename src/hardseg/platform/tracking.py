"""MLflow tracking: where runs go and how a training run is recorded.

Default store: an absolute ``sqlite:///<cwd>/mlruns/mlflow.db`` with each
experiment's artifact location set explicitly to ``<cwd>/mlruns/artifacts``
(Ray changes working directories, so relative URIs would scatter runs).
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` selects a server instead.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _tracking_store_registry
from PIL import Image

from hardseg import keys
from hardseg.errors import ConfigError
from hardseg.trainables.schedule import EPOCH, ITERATION

DEFAULT_DIR = "mlruns"
MAX_PARAM_LEN = 6000


def check_tracking_uri(uri: str) -> str:
    """``uri`` if MLflow has a tracking store for its scheme, else a one-line :class:`ConfigError`.

    MLflow's own store registry decides (``sqlite``, ``postgresql[+driver]``, ``mysql``,
    ``mssql``, ``http(s)``, ``file`` or a local path, ``databricks``); without this check an
    unsupported scheme such as ``ftp://`` fails deep inside MLflow, after Ray has started.
    """
    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception:  # MLflow raises its UnsupportedModelRegistryStoreURIException here
        raise ConfigError(f"tracking URI '{uri}' (--tracking-uri, tracking.uri or MLFLOW_TRACKING_URI): MLflow "
                          "cannot store runs there; use sqlite:///PATH.db, http://HOST:PORT (an mlflow server), "
                          "postgresql://..., mysql://... or a local folder") from None
    return uri


def resolve_tracking_uri(uri: str | None = None, workdir: Path | None = None) -> str:
    """``uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<workdir>/mlruns/mlflow.db``.

    Raises:
        ConfigError: a URI whose scheme MLflow cannot store runs in (:func:`check_tracking_uri`).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_tracking_uri(uri)
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            path = Path(uri[len("sqlite:///"):]).resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        return uri
    root = (workdir or Path.cwd()).resolve() / DEFAULT_DIR
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_root(uri: str) -> str | None:
    """Artifact folder for experiments in a local SQLite store; None for servers."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id; created (artifacts under :func:`default_artifact_root`) when missing.

    Tagged ``mlflow.experimentKind=custom_model_development``: MLflow 3's UI opens an
    untagged experiment without runs in its GenAI view (traces), and a tagged one in
    the runs table. An existing experiment without the tag gets it.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if keys.EXPERIMENT_KIND not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, keys.EXPERIMENT_KIND, keys.EXPERIMENT_KIND_VALUE)
        return exp.experiment_id
    root = default_artifact_root(uri)
    location = f"{root}/{name}" if root else None
    return client.create_experiment(name, artifact_location=location, tags={keys.EXPERIMENT_KIND: keys.EXPERIMENT_KIND_VALUE})


def ui_url(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table in the MLflow UI served at ``server``.

    MLflow 3.17's UI keeps a global GenAI / Model-training switch that wins over the
    experiment's ``mlflow.experimentKind`` tag and starts on GenAI (traces, "no data");
    ``workflowType=machine_learning`` in the URL opens the runs table.
    """
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at the runs: the ``mlflow ui`` command for ``uri`` and the page to open."""
    if uri.startswith(("http://", "https://")):
        return f"open {ui_url(experiment_id, uri)}"
    return f"mlflow ui --backend-store-uri {uri}, then open {ui_url(experiment_id)}"


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the numeric entries of ``metrics`` (NaN included; strings skipped)."""
    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in sorted(metrics.items())
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_lineage(client: MlflowClient, run_id: str, records: list) -> None:
    """Each :class:`hardseg.data.lineage.Lineage` as an MLflow dataset input of the run (what
    ``mlflow.log_input`` records, through the client): name, digest of the file list and label
    statistics, source, class names, and the context (training, validation, test, evaluation)."""
    inputs = [DatasetInput(Dataset(r.name, r.digest, "local", r.source, r.schema, r.profile),
                           [InputTag("mlflow.data.context", r.context)]) for r in records]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def log_visuals(client: MlflowClient, run_id: str, folder: Path, step: int) -> None:
    """Log every PNG in ``folder`` as an MLflow image with a step slider."""
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as img:
            client.log_image(run_id, img.copy(), key=png.stem, step=step)


def last_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step a run logged of each kind of entry (``report``: ``train/loss``, at each epoch or
    interval; ``log``: ``iter/loss``, every ``train.log_interval`` iterations); -1 for none. A resumed run's
    logger starts after them (:class:`MLflowEpochLogger`)."""
    out = {}
    for entry, key in (("report", f"{keys.TRAIN_PREFIX}loss"), ("log", f"{keys.ITER_PREFIX}loss")):
        out[entry] = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
    return out


def report_step(metrics: dict[str, Any]) -> tuple[str, int]:
    """What a report or log is (``report`` or ``log``) and its MLflow step: the epoch of an epoch
    schedule's report, else the iteration."""
    entry = "log" if keys.VISUALS in metrics or any(k.startswith(keys.ITER_PREFIX) for k in metrics) else "report"
    unit = EPOCH if EPOCH in metrics else ITERATION
    return entry, int(metrics.get(unit, 0))


class MLflowEpochLogger:
    """Logs each report of the loop (step = epoch, or the iteration of an iteration schedule), each
    per-iteration log (step = iteration) and the visuals to one MLflow run.

    Used by the driver of a Ray Train run (:class:`hardseg.platform.trainer.ReportLogger`, which gets the
    reports from a callback on the Train controller, so neither workers nor the controller talk to MLflow)
    and called directly by in-process trials.
    An entry at or before the last step already logged of its kind is skipped: a run restarted from a
    checkpoint (by Ray, or by ``hardseg train --resume``, which passes ``after`` = :func:`last_steps`)
    repeats the same entries, and the history stays one value per step.
    """

    def __init__(self, tracking_uri: str, run_id: str, after: dict[str, int] | None = None):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.logged = {"report": -1, "log": -1, **(after or {})}
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def log(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        if keys.FAILURE in metrics:  # a worker's NonFiniteLoss (trainables.ray_worker.fit_worker)
            set_tags(self.client, self.run_id, {keys.ERROR: metrics[keys.FAILURE]})
        entry, step = report_step(metrics)
        if keys.VISUALS in metrics:
            if step > self.logged["report"]:
                for name, data in sorted(metrics[keys.VISUALS].items()):
                    with Image.open(io.BytesIO(data)) as img:
                        self.client.log_image(self.run_id, img.copy(), key=name, step=step)
            return
        if step <= self.logged[entry] and keys.FAILURE not in metrics:
            return
        self.logged[entry] = max(self.logged[entry], step)
        log_metrics(self.client, self.run_id, {k: v for k, v in metrics.items() if k not in (EPOCH, ITERATION)
                                               or (k == ITERATION and EPOCH in metrics)}, step)
        if checkpoint_dir is not None and (Path(checkpoint_dir) / "visuals").is_dir():
            log_visuals(self.client, self.run_id, Path(checkpoint_dir) / "visuals", step)


def system_metrics_monitor(tracking_uri: str, run_id: str):
    """MLflow's system-metrics monitor on ``run_id`` (CPU, memory, disk, network; GPU with pynvml),
    started; ``tracking.system_metrics``. Stop it with ``.finish()``."""
    # local: MLflow's system-metrics module is imported only by runs that turn the monitor on
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


__all__ = ["mlflow", "MlflowClient", "resolve_tracking_uri", "get_or_create_experiment", "log_params",
           "log_metrics", "set_tags", "log_lineage", "MLflowEpochLogger"]

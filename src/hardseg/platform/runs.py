"""The one way hardseg opens, closes and fills an MLflow run.

Every run (``hardseg train``, a sweep's parent and trials, a study, a nightly) is
created by :func:`open_run`: its kind (``hardseg.kind``), the command line, the git
commit of the user's working directory and the library versions, plus the caller's
tags, params, text artifacts and dataset lineage. Every run ends through
:func:`close_run`, in one of three states:

* ``FINISHED``;
* ``FAILED`` with the reason in ``hardseg.error``;
* ``KILLED`` with the reason (who stopped it, how to resume) in ``hardseg.stop_reason``.

:class:`RunCloser` applies that rule to whatever happens inside a ``with`` block.
:func:`log_checkpoint_artifacts` logs a finished run's exported model. Tag names
live in :mod:`hardseg.keys`.
"""

from __future__ import annotations

import platform as _platform
import shlex
import subprocess
import sys
import threading
import time
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from hardseg import keys
from hardseg.config import HardsegConfig
from hardseg.data.normalisation import IMAGENET_MEAN, IMAGENET_STD
from hardseg.errors import HardsegError, NonFiniteLoss, TrainingError, one_line
from hardseg.platform import tracking
from hardseg.strategies import strategy_warnings
from hardseg.trainables.checkpoints import EXPORT_FILE

EXPORT_ARTIFACT_DIR = "model"
MAX_REASON = 5000  # characters of a reason tag (MLflow keeps up to 8,000)


# -- tags ------------------------------------------------------------------------------------------------
def git_commit(path: Path | None = None) -> str:
    """``HEAD`` of the git repository at ``path`` (default: the working directory), or ``unknown``."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path.cwd(), capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cli_line() -> str:
    """The command that is running, as the user typed it (``hardseg ablate --strategies ce hl``)."""
    return shlex.join(["hardseg", *sys.argv[1:]]) if sys.argv else "hardseg"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def environment_tags() -> dict[str, str]:
    """What every run records about where it came from: command line, git commit, versions."""
    return {keys.CLI: cli_line(), keys.GIT_COMMIT: git_commit(), "hardseg_version": _version("hardseg"),
            "ray_version": _version("ray"), "torch_version": _version("torch"),
            "python_version": _platform.python_version()}


def model_tags(cfg: HardsegConfig, reports: list | None = None) -> dict[str, str]:
    """The model's encoder, weights and the input normalisation of the run (data/transforms.py,
    the weights' recipe: models/pretrained.py), plus what each weight file gave."""
    tags = {keys.ENCODER: cfg.model.encoder or "", keys.PRETRAINED: cfg.model.pretrained,
            keys.NORMALISATION: f"mean={list(IMAGENET_MEAN)} std={list(IMAGENET_STD)}"}
    for report in reports or []:
        tags.update(report.tags())
    return tags


def train_pixels_per_image(cfg: HardsegConfig) -> int | None:
    """Label pixels of one training image as the config knows them (crop, or the synthetic size), else None."""
    crop = cfg.data.augment.crop
    if cfg.data.augment.enabled and crop:
        return crop[0] * crop[1] if isinstance(crop, (tuple, list)) else crop ** 2  # (height, width) or a square
    return cfg.data.synthetic.size ** 2 if cfg.data.dataset == "synthetic" else None


def strategy_warning_tags(cfg: HardsegConfig) -> dict[str, str]:
    """``hardseg.warning.<strategy>`` tags for settings that run but cannot act or defeat their
    strategy under the rest of ``cfg`` (OHEM's min_kept ≥ the pixels of an image, when the size is
    known here; HL's λ under AdamW): ``Strategy.config_warning``."""
    warnings = strategy_warnings(cfg.strategies, cfg.strategy_params, train_pixels_per_image(cfg),
                                 cfg.train.optimizer)
    return {f"{keys.WARNING_PREFIX}{name}": msg for name, msg in warnings.items()}


def warning_lines(cfgs: list[HardsegConfig]) -> list[str]:
    """The distinct ``[hardseg] warning: ...`` lines of :func:`strategy_warning_tags` over ``cfgs``
    (a run, or the trial configs a sweep can have), in first-seen order."""
    seen = dict.fromkeys(msg for cfg in cfgs for msg in strategy_warning_tags(cfg).values())
    return [f"[hardseg] warning: {msg}" for msg in seen]


def warning_lines_of(tags: dict[str, str]) -> list[str]:
    """The distinct ``[hardseg] warning: ...`` lines of warning tags (:func:`strategy_warning_tags`), in order."""
    return [f"[hardseg] warning: {msg}" for msg in dict.fromkeys(tags.values())]


def training_tags(cfg: HardsegConfig, warnings: dict[str, str] | None = None) -> dict[str, str]:
    """What a run trains: strategies, model, data, seed and which split each reported number comes
    from (the best epoch and sweeps use val; ``test/*`` is held out). ``warnings``: the run's
    :func:`strategy_warning_tags`, computed already (else here)."""
    return {
        **(strategy_warning_tags(cfg) if warnings is None else warnings),
        keys.STRATEGIES: "+".join(cfg.strategies),
        keys.MODEL: cfg.model.name,
        keys.DATASET: cfg.data.dataset,
        keys.SELECTION_SPLIT: "val",
        keys.TEST_SPLIT: cfg.data.test_split or "none",
        keys.SEED: str(cfg.seed),
        **model_tags(cfg),
    }


def config_text(cfg: HardsegConfig) -> str:
    """The resolved config as the YAML logged with every training run (``config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# -- opening and closing -----------------------------------------------------------------------------------
def open_run(client: tracking.MlflowClient, experiment_id: str, name: str, kind: str, *,
             tags: dict[str, str] | None = None, params: dict[str, Any] | None = None,
             texts: dict[str, str] | None = None, lineage: list | None = None, parent: str | None = None,
             environment: dict[str, str] | None = None) -> str:
    """Create a run named ``name`` of ``kind`` (``hardseg.kind``); returns its id.

    Tags: ``environment`` (default :func:`environment_tags` of this process; a sweep's trials get
    the driver's, since Tune runs them in another directory), then ``tags``; ``parent`` nests it
    (``mlflow.parentRunId``).
    ``params`` are logged as params, ``texts`` as text artifacts (``{"config.yaml": ...}``) and
    ``lineage`` (:class:`hardseg.data.lineage.Lineage` records) as the run's dataset inputs.
    """
    environment = environment if environment is not None else environment_tags()
    all_tags = {**environment, keys.KIND: kind, keys.RUN_NAME: name, **(tags or {})}
    if parent:
        all_tags[keys.PARENT] = parent
    run_id = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()}).info.run_id
    tracking.log_params(client, run_id, params or {})
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)
    tracking.log_lineage(client, run_id, lineage or [])
    return run_id


def reopen_run(client: tracking.MlflowClient, run_id: str, tags: dict[str, str] | None = None) -> None:
    """Mark a run RUNNING again (a resumed sweep or study, a restarted trial), with ``tags``."""
    client.update_run(run_id, status="RUNNING")
    tracking.set_tags(client, run_id, tags or {keys.RESUMED: time.strftime("%Y-%m-%dT%H:%M:%S")})


def close_run(client: tracking.MlflowClient, run_id: str, status: str, reason: str | None = None,
              end_time: int | None = None) -> None:
    """End a run: FINISHED; FAILED with ``reason`` in ``hardseg.error``; KILLED with ``reason`` in
    ``hardseg.stop_reason``. ``end_time`` (ms) when the run ended earlier than now."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"unknown terminal status {status!r}")
    if reason:
        tracking.set_tags(client, run_id, {keys.ERROR if status == "FAILED" else keys.STOP_REASON:
                                           reason[:MAX_REASON]})
    client.set_terminated(run_id, status, end_time=end_time)


class TrialStopped(Exception):
    """A sweep's scheduler stopped this trial early (Tune raises SystemExit in ``tune.report``)."""


class RunCloser:
    """Ends an MLflow run in a terminal state whatever happens inside the ``with`` (:func:`close_run`).

    * the block completes: FINISHED, unless it called :meth:`kill` (an interrupted sweep);
    * Ctrl-C: KILLED, "interrupted (Ctrl-C)" plus ``resume_hint``;
    * :class:`TrialStopped`: KILLED with its message, then ``SystemExit(0)`` so Tune finishes stopping
      the trial;
    * any other exception: FAILED with the reason (a :class:`HardsegError`'s message, else the
      innermost cause on one line, plus ``resume_hint``). With ``wrap_errors`` a non-hardseg
      exception is re-raised as :class:`TrainingError`; otherwise the exception goes on as it is.
    """

    def __init__(self, client: tracking.MlflowClient, run_id: str, *, resume_hint: str = "",
                 wrap_errors: bool = True):
        self.client, self.run_id = client, run_id
        self.resume_hint = resume_hint
        self.wrap_errors = wrap_errors
        self.closed = False

    def kill(self, reason: str) -> None:
        """Close the run KILLED now (the block then ends without closing it again)."""
        close_run(self.client, self.run_id, "KILLED", self._with_hint(reason))
        self.closed = True

    def _with_hint(self, reason: str) -> str:
        return f"{reason}; {self.resume_hint}" if self.resume_hint else reason

    def __enter__(self) -> "RunCloser":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.closed:
            return False
        if exc is None:
            close_run(self.client, self.run_id, "FINISHED")
            return False
        if isinstance(exc, KeyboardInterrupt):
            close_run(self.client, self.run_id, "KILLED", self._with_hint("interrupted (Ctrl-C)"))
            return False
        if isinstance(exc, TrialStopped):
            close_run(self.client, self.run_id, "KILLED", str(exc))
            raise SystemExit(0) from None  # let Tune finish stopping the trial
        reason = str(exc) if isinstance(exc, HardsegError) else one_line(exc, innermost=True)
        close_run(self.client, self.run_id, "FAILED", self._with_hint(reason))
        if self.wrap_errors and not isinstance(exc, HardsegError):
            raise TrainingError(f"run {self.run_id} failed: {reason}") from exc
        return False


def raise_if_run_failed(client: tracking.MlflowClient, run_id: str) -> None:
    """Ray Train workers report a non-finite loss instead of raising it (Ray would retry a deterministic
    failure); the controller's MLflow callback stores it as ``hardseg.error``. Raise it here, on the driver."""
    error = client.get_run(run_id).data.tags.get(keys.ERROR)
    if error:
        raise NonFiniteLoss.of_run(run_id, error)


def import_export_meanwhile(cfg: HardsegConfig) -> None:
    """With ``tracking.log_model``, import what :func:`log_checkpoint_artifacts` needs for MLflow's model format
    (:mod:`hardseg.platform.export`: the model code and mlflow.pytorch, 1.6 s here) in a daemon thread, for a
    process that only waits meanwhile (a sweep trial while its TorchTrainer fits); the export then finds the
    modules imported, or waits for their import to end. A failed import is left to the export to report."""
    def load() -> None:
        try:
            import_module("hardseg.platform.export")
        except Exception:  # noqa: BLE001 - log_checkpoint_artifacts imports it again and says why
            pass

    if cfg.tracking.log_model:
        threading.Thread(target=load, name="hardseg-import-export", daemon=True).start()


def log_checkpoint_artifacts(client: tracking.MlflowClient, run_id: str, checkpoint_dir: Path | None,
                             config_yaml: str, wall_s: float) -> None:
    """The exported model of the last checkpoint (``model_export.pt`` and, with ``tracking.log_model``,
    the same model in MLflow's format, :mod:`hardseg.platform.export`), its config and the run's wall time."""
    export = Path(checkpoint_dir) / EXPORT_FILE if checkpoint_dir is not None else None
    if export is not None and export.is_file():
        client.log_artifact(run_id, str(export), EXPORT_ARTIFACT_DIR)
        if yaml.safe_load(config_yaml).get("tracking", {}).get("log_model", True):
            try:
                # A sweep trial that drives a TorchTrainer needs them only here, for a run that logs its model.
                # local: the model code and mlflow.pytorch cost seconds to import (issue 26)
                from hardseg.platform.export import log_mlflow_model

                log_mlflow_model(client, run_id, export)
            except Exception as exc:  # the run's results stand; say why its MLflow model is missing
                why = one_line(exc, innermost=True)
                tracking.set_tags(client, run_id, {keys.MODEL_LOG_ERROR: why})
                print(f"[hardseg] warning: the MLflow model of run {run_id} was not logged: {why}", flush=True)
    client.log_text(run_id, config_yaml, f"{EXPORT_ARTIFACT_DIR}/config.yaml")
    tracking.log_metrics(client, run_id, {keys.WALL_TIME: wall_s})

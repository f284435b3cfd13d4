"""What hardseg's commands print: Ray's console knobs, set in one place.

hardseg prints its own lines (``[hardseg] ...``: the per-epoch line, the live
trial table of :mod:`hardseg.platform.trial_table`, where the runs and the report
went). Ray would add its own around them; each knob below turns one of those
off, through the environment variable Ray 2.60 reads for it:

* ``RAY_AIR_NEW_OUTPUT=0``: Tune's legacy reporter, silent at ``verbose=0``.
  The new output engine prints the "Configuration for experiment" box and the
  "View detailed results here" / TensorBoard hint at *every* verbosity
  (``ray/tune/experimental/output.py``, ``TuneTerminalReporter.experiment_started``);
  the legacy reporter prints nothing at verbosity 0, so the TensorBoard hint goes
  with the box. ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` is left alone: it would
  also drop Tune's per-trial CSV and JSON result files
  (``ray/tune/utils/callback.py``), which users and tools read.
* ``RAY_DEDUP_LOGS=0``: no "[repeated 2x across cluster]" rewriting of worker
  lines; it is read when ``ray`` is first imported, hence :func:`quiet_console`
  runs in ``main`` before any command imports Ray.
* ``RAY_COLOR_PREFIX=0`` when stdout is not a terminal: worker lines forwarded to
  the driver carry no ANSI colour codes in a log file or a CI log.
* ``MLFLOW_LOGGING_LEVEL=WARNING``: no "Creating initial MLflow database tables"
  INFO lines when a command creates the SQLite store;
  ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``: no "🏃 View run … at" / "🧪 View
  experiment at" lines each time a run on an MLflow server ends
  (``mlflow/tracking/_tracking_service/client.py``, ``_log_url``; hardseg prints the UI
  address of its runs once);
  ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``: no "Downloading artifacts" bar when
  ``hardseg report`` fetches the HL maps.
* two kinds of Ray notices are dropped by a logging filter (:class:`DropNotices`,
  :data:`DROPPED_NOTICES`): the "Token authentication is enabled for this Ray
  cluster" warning of every new local runtime (token authentication itself stays
  on, as Ray 2.60 sets it up; ``RAY_AUTH_MODE=token`` would also silence it, but
  Ray reads it once, at import, and a driver joining a cluster without a token must
  keep Ray's own choice), and Tune's Ctrl-C notices, whose "Resume experiment with:
  Tuner.restore(...)" is not the command to run (hardseg prints
  ``hardseg sweep --resume NAME``). The same filter drops Ray's job-SDK INFO line
  "WebSocket closed for job …" at the end of ``hardseg submit``'s log stream and its "Uploading package …"
  lines (hardseg prints the job it submitted; ``hardseg.platform.jobs`` also leaves the job manager's
  "Runtime env is setting up." out of the job logs it prints), Ray
  Train's "Detected that the Ray Train controller actor (…) is dead. Cleaning up
  placement group" (from the cleaner of a ``TorchTrainer`` other than hardseg's, whose
  runs have :mod:`hardseg.platform.worker_groups` instead), and Optuna's "A new study created in
  RDB with name: …" (hardseg names the study and its storage).

Ray worker processes (trials, Train controllers, the placement-group cleaner actor)
log in their own process: :func:`ray_runtime_env` makes every worker of a driver run
:func:`quiet_console` first (Ray's ``worker_process_setup_hook``), on a local Ray and
on a cluster alike, so the filters and the MLflow knobs act there too.

Every knob is a default: a value already in the environment wins.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# logger name -> starts of the messages dropped from it
DROPPED_NOTICES = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this Ray",),
    "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted, but the most recent state"),
    "ray.dashboard.modules.job.sdk": ("WebSocket closed for job",),
    # hardseg submit's upload of the working directory (the packaging helpers log through the SDK's logger)
    "ray.dashboard.modules.dashboard_sdk": ("Uploading package", "Package gcs://", "Creating a file package",
                                            "Pushing file package", "Successfully pushed file package"),
    "ray._private.runtime_env.packaging": ("Creating a file package", "Pushing file package",
                                           "Successfully pushed file package"),
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": (
        "Detected that the Ray Train controller actor",),
    "optuna.storages._rdb.storage": ("A new study created in RDB",),
    # a new SQLite store's set-up, where MLflow was imported before MLFLOW_LOGGING_LEVEL (an in-process CLI)
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
    "optuna.storages.journal._storage": ("A new study created in Journal",),
    "optuna.storages._in_memory": ("A new study created in memory",),
}
WORKER_SETUP_HOOK = "hardseg.platform.console.quiet_console"


def console_env(stream: TextIO | None = None) -> dict[str, str]:
    """The environment defaults that keep Ray's console quiet, for ``stream`` (default stdout)."""
    stream = stream or sys.stdout
    env = {"RAY_AIR_NEW_OUTPUT": "0", "RAY_DEDUP_LOGS": "0", "MLFLOW_LOGGING_LEVEL": "WARNING",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    if not _isatty(stream):
        env["RAY_COLOR_PREFIX"] = "0"
    return env


def quiet_console(stream: TextIO | None = None) -> None:
    """Set :func:`console_env` as defaults of this process (and so of the Ray processes it starts)."""
    for key, value in console_env(stream).items():
        os.environ.setdefault(key, value)
    for name, prefixes in DROPPED_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotices) for f in logger.filters):
            logger.addFilter(DropNotices(prefixes))


def ray_runtime_env() -> dict[str, str]:
    """``ray.init(runtime_env=...)``: every worker process of the driver runs :func:`quiet_console` first."""
    return {"worker_process_setup_hook": WORKER_SETUP_HOOK}


class DropNotices(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def progress_bar_wanted(command: str, stream: TextIO | None = None) -> bool:
    """A bar within each epoch only for a single run (``hardseg train``) on a terminal
    (:mod:`hardseg.trainables.progress`)."""
    return command == "train" and _isatty(stream or sys.stdout)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False

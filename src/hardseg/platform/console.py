"""What hardseg's commands print: Ray's console knobs, set in one place.

hardseg prints its own lines (``[hardseg] ...``: the per-epoch line, the live
trial table of :mod:`hardseg.platform.progress`, where the runs and the report
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
  ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``: no "Downloading artifacts" bar when
  ``hardseg report`` fetches the HL maps.
* the "Token authentication is enabled for this Ray cluster" warning of every
  new local runtime is dropped by a logging filter (:class:`DropTokenNotice`);
  token authentication itself stays on, as Ray 2.60 sets it up. Setting
  ``RAY_AUTH_MODE=token`` instead would also silence it, but Ray reads that
  variable once, at import, and a driver joining a cluster without a token
  must keep Ray's own choice.

Every knob is a default: a value already in the environment wins.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def console_env(stream: TextIO | None = None) -> dict[str, str]:
    """The environment defaults that keep Ray's console quiet, for ``stream`` (default stdout)."""
    stream = stream or sys.stdout
    env = {"RAY_AIR_NEW_OUTPUT": "0", "RAY_DEDUP_LOGS": "0", "MLFLOW_LOGGING_LEVEL": "WARNING",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if not _isatty(stream):
        env["RAY_COLOR_PREFIX"] = "0"
    return env


def quiet_console(stream: TextIO | None = None) -> None:
    """Set :func:`console_env` as defaults of this process (and so of the Ray processes it starts)."""
    for key, value in console_env(stream).items():
        os.environ.setdefault(key, value)
    token_logger = logging.getLogger(TOKEN_NOTICE_LOGGER)
    if not any(isinstance(f, DropTokenNotice) for f in token_logger.filters):
        token_logger.addFilter(DropTokenNotice())


class DropTokenNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster uses token authentication (a default, not a problem)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def progress_bar_wanted(command: str, stream: TextIO | None = None) -> bool:
    """A bar within each epoch only for a single run (``hardseg train``) on a terminal
    (:mod:`hardseg.trainables.progress`)."""
    return command == "train" and _isatty(stream or sys.stdout)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False

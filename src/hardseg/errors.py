"""User-facing errors.

Every error a user can fix by changing their input derives from
:class:`HardsegError`. The CLI prints ``str(err)`` as one line and exits with
status 2; nothing is written to MLflow before the input has been validated.
:func:`one_line` is how any other exception is put on one line.
"""

from hardseg.keys import FAILURE


class HardsegError(Exception):
    """An error caused by user input; the message says what to fix."""


class ConfigError(HardsegError, ValueError):
    """An invalid configuration key, value or combination."""


class DataError(HardsegError, ValueError):
    """A missing or malformed dataset; the message names the file."""


class TrainingError(HardsegError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or inf)."""


class NonFiniteLoss(TrainingError, FloatingPointError):
    """The loss or the gradients stopped being finite (``train_one_epoch``'s check).

    Deterministic: the same seed fails at the same step again, so a run that meets
    it fails (MLflow status FAILED, the message in ``hardseg.error``) instead of
    being retried from its last checkpoint. ``epoch`` is the 1-based epoch it
    happened in (0: unknown).
    """

    def __init__(self, message: str, epoch: int = 0):
        super().__init__(message)
        self.epoch = epoch

    @classmethod
    def of_run(cls, run_id: str, reason: str) -> "NonFiniteLoss":
        """The error a run's driver raises: which run, the worker's reason and what to change."""
        return cls(f"run {run_id} failed: {reason}; lower train.lr or check the data and strategy settings")

    def as_report(self) -> dict[str, object]:
        """The per-epoch report that carries this failure from a worker to the platform (:data:`hardseg.keys.FAILURE`)."""
        return {"epoch": self.epoch, FAILURE: str(self)}


def one_line(exc: BaseException, *, typed: bool = True, innermost: bool = False) -> str:
    """``exc`` on one line, for a message or an MLflow tag: ``Type: first line of its message``, or the
    type's name alone when the message is empty.

    Args:
        typed: False drops the ``Type: `` prefix (a message that already says what failed:
            ``cannot read {path}: {reason}``).
        innermost: a failed run's reason (``hardseg.error``): the innermost ``raise ... from`` cause
            instead, the *last* line of its message (a Ray worker's error is its traceback, which ends
            with the exception), at most 500 characters.
    """
    if innermost:
        while exc.__cause__ is not None:
            exc = exc.__cause__
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if innermost else lines[0]
    text = f"{type(exc).__name__}: {line}" if typed else line
    return text[:500] if innermost else text

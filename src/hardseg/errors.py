"""User-facing errors.

Every error a user can fix by changing their input derives from
:class:`HardsegError`. The CLI prints ``str(err)`` as one line and exits with
status 2; nothing is written to MLflow before the input has been validated.
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

"""User-facing errors.

Every error a user can fix by changing their input derives from
:class:`HardsegError`. The CLI prints ``str(err)`` as one line and exits with
status 2; nothing is written to MLflow before the input has been validated.
"""


class HardsegError(Exception):
    """An error caused by user input; the message says what to fix."""


class ConfigError(HardsegError, ValueError):
    """An invalid configuration key, value or combination."""


class DataError(HardsegError, ValueError):
    """A missing or malformed dataset; the message names the file."""


class TrainingError(HardsegError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or inf)."""


class NonFiniteLoss(TrainingError):
    """The loss or the gradients stopped being finite; the message names the epoch and step."""

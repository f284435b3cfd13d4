"""Fault injection for the fault-tolerance test: a Ray Train worker that SIGKILLs itself once.

Not part of the package: ``test_train_ray`` hands :func:`kill_rank_1_at_epoch_3` to
``run_training(train_loop=...)`` and registers this module with Ray's cloudpickle by
value, so the Train workers (which cannot import ``tests/``) receive the code itself.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from hardseg.config import HardsegConfig
from hardseg.trainables.ray_worker import RaySession, fit_worker

KILL_RANK, KILL_AT_EPOCH = 1, 3


class KillingSession(RaySession):
    """A :class:`RaySession` whose rank ``kill_rank`` kills its own process (SIGKILL) at the start of
    1-based epoch ``kill_at_epoch`` (right after reporting the epoch before), on an attempt that did
    not resume from a checkpoint."""

    def __init__(self, kill_rank: int, kill_at_epoch: int):
        super().__init__()
        self.kill_rank, self.kill_at_epoch = kill_rank, kill_at_epoch
        self.resumed = False

    def load_checkpoint(self) -> dict[str, Any] | None:
        state = super().load_checkpoint()
        self.resumed = state is not None
        return state

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        if self.rank == self.kill_rank and not self.resumed and metrics.get("epoch") == self.kill_at_epoch - 1:
            print(f"[hardseg] fault injection: rank {self.rank} kills itself at epoch {self.kill_at_epoch}", flush=True)
            # Ray Train's controller collects reports on its health-check poll; give it
            # time to register the previous epoch's checkpoint before dying.
            time.sleep(5.0)
            os.kill(os.getpid(), signal.SIGKILL)


def kill_rank_1_at_epoch_3(config: dict[str, Any]) -> None:
    """A ``train_loop_per_worker`` like the production one, with a :class:`KillingSession`."""
    fit_worker(HardsegConfig.model_validate(config["run"]), KillingSession(KILL_RANK, KILL_AT_EPOCH))


class DriverKillingSession(RaySession):
    """Rank 0 SIGKILLs the *driver* process ``pid`` (``hardseg train`` itself, as a preempted node
    would) at its per-iteration log of iteration ``at``, after giving the controller time to register
    the checkpoint before it; every worker then waits for Ray to end it with the driver's job."""

    def __init__(self, pid: int, at: int):
        super().__init__()
        self.pid, self.at = pid, at

    def log(self, metrics: dict[str, Any]) -> None:
        super().log(metrics)
        if metrics.get("iteration") == self.at:
            if self.rank == 0:
                time.sleep(3.0)
                print(f"[hardseg] fault injection: killing the driver at iteration {self.at}", flush=True)
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(120)


def kill_driver_at(config: dict[str, Any], pid: int, at: int) -> None:
    """A ``train_loop_per_worker`` whose rank 0 kills the driver ``pid`` at iteration ``at``."""
    fit_worker(HardsegConfig.model_validate(config["run"]), DriverKillingSession(pid, at))

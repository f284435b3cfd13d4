"""A run's schedule as plain arithmetic: its length, the learning rate at each iteration, and the
iterations after which the loop evaluates, checkpoints and logs.

No torch, Ray or MLflow here, so the dry run and recipes can print a schedule without building
anything. A run is counted in one *unit* (``train.epochs`` or ``train.iters``, exactly one is set):

* ``epoch``: ``epochs × iters_per_epoch`` iterations, one report per epoch; ``train.eval_interval``
  and ``train.checkpoint_interval`` count epochs;
* ``iteration``: ``train.iters`` iterations (the sampler starts a new pass over the data whenever one
  ends), one report at every evaluation or checkpoint; the intervals count iterations.

The learning rate is mmsegmentation's poly schedule (mmcv's ``PolyLrUpdaterHook``, ``by_epoch=False``)::

    lr(it) = (base − min_lr) · (1 − it / iters) ^ power + min_lr

for the 0-based iteration ``it``, after a linear warm-up over ``train.warmup_iters`` iterations that
starts from ``warmup_ratio × lr(it)`` (mmcv's ``warmup='linear'``):
``lr(it) · (1 − (1 − it / warmup_iters)(1 − warmup_ratio))``. ``train.warmup_epochs`` keeps the
epoch schedules' older warm-up, ``base · (it + 1) / warmup`` from zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EPOCH, ITERATION = "epoch", "iteration"  # the units, also the report keys that carry the run's progress
Unit = Literal["epoch", "iteration"]


@dataclass(frozen=True)
class Schedule:
    """Length, learning rate and intervals of one run (see the module docstring).

    ``iters``: iterations in all; ``iters_per_epoch``: batches in one pass over a worker's shard;
    ``warmup_ratio`` None: the ``warmup_epochs`` warm-up from zero; ``eval_interval`` and
    ``checkpoint_interval`` in ``unit``; ``log_interval`` in iterations (0: no per-iteration logs).
    """

    unit: Unit
    iters: int
    iters_per_epoch: int
    lr: float
    power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 0
    warmup_ratio: float | None = None
    eval_interval: int = 1
    checkpoint_interval: int = 1
    log_interval: int = 50

    @classmethod
    def from_config(cls, train: Any, iters_per_epoch: int) -> "Schedule":
        """The schedule of a ``TrainConfig`` whose workers each see ``iters_per_epoch`` batches per pass."""
        if train.iters is not None:
            iters, unit = train.iters, ITERATION
            eval_interval = train.eval_interval or max(1, iters // 10)
            warmup, ratio = train.warmup_iters, train.warmup_ratio
        else:
            iters, unit = train.epochs * iters_per_epoch, EPOCH
            eval_interval = train.eval_interval or train.eval_every
            if train.warmup_iters:
                warmup, ratio = train.warmup_iters, train.warmup_ratio
            else:
                warmup, ratio = int(train.warmup_epochs * iters_per_epoch), None
        checkpoint = train.checkpoint_interval or (eval_interval if unit == ITERATION else 1)
        return cls(unit, iters, iters_per_epoch, train.lr, train.poly_power, train.min_lr, warmup, ratio,
                   eval_interval, checkpoint, train.log_interval)

    # -- length -----------------------------------------------------------------------------------
    @property
    def unit_iters(self) -> int:
        """Iterations in one unit: 1, or the iterations of an epoch."""
        return self.iters_per_epoch if self.unit == EPOCH else 1

    @property
    def length(self) -> int:
        """The run's length in its unit (epochs or iterations)."""
        return self.iters // self.unit_iters

    def step_of(self, done: int) -> int:
        """Progress in the run's unit after ``done`` iterations (the MLflow step and Tune's time)."""
        return done // self.unit_iters

    def progress(self, it: int) -> float:
        """Fraction of the run before 0-based iteration ``it`` (what the loss schedules read)."""
        if self.unit == EPOCH:  # the epoch schedules' arithmetic, kept bit for bit
            epoch, step = divmod(it, self.iters_per_epoch)
            return (epoch + step / self.iters_per_epoch) / self.length
        return it / self.iters

    # -- learning rate ------------------------------------------------------------------------------
    def lr_at(self, it: int, base: float | None = None) -> float:
        """The learning rate at 0-based iteration ``it`` for a group whose base rate is ``base`` (``lr``)."""
        base = self.lr if base is None else base
        if self.warmup_iters and it < self.warmup_iters and self.warmup_ratio is None:
            return base * ((it + 1) / self.warmup_iters)
        coeff = max(0.0, 1.0 - it / max(1, self.iters)) ** self.power
        regular = (base - self.min_lr) * coeff + self.min_lr
        if self.warmup_iters and it < self.warmup_iters:
            k = (1 - it / self.warmup_iters) * (1 - self.warmup_ratio)
            return regular * (1 - k)
        return regular

    # -- what happens after an iteration ------------------------------------------------------------
    def _at(self, done: int, interval: int) -> bool:
        return done == self.iters or (done % self.unit_iters == 0 and self.step_of(done) % interval == 0)

    def evaluates(self, done: int) -> bool:
        """Whether the loop evaluates after ``done`` iterations (always at the end)."""
        return self._at(done, self.eval_interval)

    def checkpoints(self, done: int) -> bool:
        """Whether the loop writes a checkpoint after ``done`` iterations (always at the end)."""
        return self._at(done, self.checkpoint_interval)

    def reports(self, done: int) -> bool:
        """Whether the loop reports after ``done`` iterations: every epoch, or at an evaluation or checkpoint."""
        if self.unit == EPOCH:
            return done % self.iters_per_epoch == 0 or done == self.iters
        return self.evaluates(done) or self.checkpoints(done)

    def logs(self, done: int) -> bool:
        """Whether the loop logs the iteration's losses and timings after ``done`` iterations."""
        return bool(self.log_interval) and done % self.log_interval == 0

    def next_report(self, done: int) -> int:
        """The first iteration count after ``done`` at which the loop reports."""
        if self.unit == EPOCH:
            return min(self.iters, (done // self.iters_per_epoch + 1) * self.iters_per_epoch)
        nxt = [(done // i + 1) * i for i in (self.eval_interval, self.checkpoint_interval)]
        return min(self.iters, *nxt)

    def points(self, what: str) -> list[int]:
        """The steps (in the run's unit) of every ``evaluate`` or ``checkpoint``, in order."""
        test = self.evaluates if what == "evaluate" else self.checkpoints
        interval = self.eval_interval if what == "evaluate" else self.checkpoint_interval
        steps = list(range(interval, self.length + 1, interval))
        if not steps or steps[-1] != self.length:
            steps.append(self.length)
        return [s for s in steps if test(s * self.unit_iters)]

    def summary(self, per_epoch_known: bool = True) -> str:
        """The schedule in a few lines, for the dry run (``per_epoch_known``: whether ``iters_per_epoch`` is)."""
        if self.unit == EPOCH:
            length = f"{self.length} epochs ({self.iters} iterations of {self.iters_per_epoch} per epoch)"
        else:
            length = f"{self.iters} iterations" + (f" (a pass over the data is {self.iters_per_epoch})"
                                                   if per_epoch_known else "")
        lines = [f"schedule: {length}, poly power {self.power}, lr {self.lr!r} -> min_lr {self.min_lr!r}"
                 + (f", warm-up {self.warmup_iters} iterations from ratio {self.warmup_ratio!r}"
                    if self.warmup_iters and self.warmup_ratio is not None else
                    (f", warm-up {self.warmup_iters} iterations from 0" if self.warmup_iters else ""))]
        marks = sorted({0, self.warmup_iters, self.iters // 2, self.iters})
        lines.append("lr at iteration " + ", ".join(f"{m}: {self.lr_at(m)!r}" for m in marks))
        for what in ("evaluate", "checkpoint"):
            pts = self.points(what)
            shown = ", ".join(map(str, pts)) if len(pts) <= 24 else \
                ", ".join(map(str, pts[:10])) + f", ... ({len(pts)} in all), " + ", ".join(map(str, pts[-3:]))
            lines.append(f"{what} after {self.unit} {shown}")
        lines.append(f"log every {self.log_interval} iterations" if self.log_interval else "no per-iteration logs")
        return "\n".join(lines)


def unit_of(train: Any) -> Unit:
    """The unit a ``TrainConfig`` counts in: ``iteration`` when ``train.iters`` is set, else ``epoch``."""
    return ITERATION if train.iters is not None else EPOCH


def length_of(train: Any) -> int:
    """A ``TrainConfig``'s length in its unit (what sweeps compare a trial's progress with)."""
    return train.iters if train.iters is not None else train.epochs

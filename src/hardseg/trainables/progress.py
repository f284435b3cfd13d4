"""What a run shows on the console as it goes: a line per report and per iteration log, and a
progress bar within each training epoch, for a single run watched on a terminal.

Rank 0 prints :func:`print_report` at every report (epoch, or evaluation and checkpoint of an
iteration schedule) and :func:`print_iteration` every ``train.log_interval`` iterations.

The loop wraps its training loader in :func:`epoch_bar`; the bar is drawn only when the
process that runs the loop installed a factory with :func:`set_bar_factory`:

* ``hardseg train`` on a terminal sets ``HARDSEG_PROGRESS_BAR=1`` before Ray starts
  (:func:`hardseg.platform.console.progress_bar_wanted`); rank 0 of the Ray Train workers
  installs Ray's ``tqdm_ray.tqdm`` (:mod:`hardseg.trainables.ray_worker`), whose updates Ray
  draws on the driver's terminal (a worker's own stdout is a log file);
* ``python -m hardseg.trainables.local`` on a terminal installs ``tqdm.tqdm``.

Sweeps, ablations, other ranks, and any run whose stdout is not a terminal get the loader
unchanged: their console is the per-epoch line and the live trial table.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

from hardseg import keys
from hardseg.trainables.schedule import EPOCH, ITERATION, Schedule

BAR_ENV = "HARDSEG_PROGRESS_BAR"  # "1": draw the bar (set by the driver; read by ray_worker)

T = TypeVar("T")
_factory: Callable[..., Iterable] | None = None


def set_bar_factory(factory: Callable[..., Iterable] | None) -> None:
    """Install (or with None remove) the bar class: called as ``factory(iterable, desc=..., total=...)``."""
    global _factory
    _factory = factory


def epoch_bar(loader: Iterable[T], epoch: int, epochs: int) -> Iterable[T]:
    """``loader`` itself, or wrapped in the installed bar labelled ``epoch e/E`` (``epoch`` 0-based)."""
    if _factory is None:
        return loader
    return _closing(_factory(loader, desc=f"epoch {epoch + 1}/{epochs}", total=len(loader)))


def _closing(bar) -> Iterator:
    """Iterate ``bar`` and close it at the end (Ray's bar sends its final state only on close)."""
    try:
        yield from bar
    finally:
        bar.close()


def print_report(schedule: Schedule, done: int, m: dict[str, Any]) -> None:
    """The console line of a report after ``done`` iterations: step, loss, val mIoU, throughput, time."""
    train = keys.TRAIN_PREFIX
    miou = m.get(f"{keys.VAL_PREFIX}{keys.MIOU}")
    label = "epoch" if schedule.unit == EPOCH else "iteration"
    parts = [f"{label} {schedule.step_of(done)}/{schedule.length}", f"loss {m.get(f'{train}loss', float('nan')):.4f}"]
    if miou is not None:
        parts.append(f"val mIoU {miou:.4f}")
    took = m.get(f"{train}epoch_time_s", m.get(f"{train}interval_time_s", 0))
    parts += [f"{m.get(f'{train}images_per_s', 0):.0f} img/s", f"{took:.1f}s"]
    print("[hardseg] " + " | ".join(parts), flush=True)


def print_iteration(schedule: Schedule, log: dict[str, Any]) -> None:
    """The console line of a per-iteration log (every ``train.log_interval`` iterations)."""
    p = keys.ITER_PREFIX
    parts = [f"iter {log[ITERATION]}/{schedule.iters}", f"loss {log.get(f'{p}loss', float('nan')):.4f}",
             f"lr {log.get(f'{p}lr/0', float('nan')):.3e}",
             f"{log[f'{p}step_time_s']:.3f} s/it (data {log[f'{p}data_time_s']:.3f})",
             f"{log[f'{p}images_per_s']:.0f} img/s"]
    if f"{p}max_memory_allocated_bytes" in log:
        parts.append(f"mem {log[f'{p}max_memory_allocated_bytes'] / 2**30:.2f} GiB")
    print("[hardseg] " + " | ".join(parts), flush=True)

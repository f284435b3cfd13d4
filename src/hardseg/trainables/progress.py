"""A progress bar within each training epoch, for a single run watched on a terminal.

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

from typing import Callable, Iterable, Iterator, TypeVar

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

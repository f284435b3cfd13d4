"""The loop's session in a one-worker sweep trial: training in the Tune trial's own process.

:class:`TuneSession` is the :class:`~hardseg.trainables.loop.Session` of
``trial._fit_in_process``: each epoch's report goes to the trial's MLflow run
and, when the sweep's searcher may see it, with its checkpoint to Ray Tune (so a
restored sweep resumes the trial's epochs). It keeps a copy of the latest
checkpoint for the trial's final artifacts (``model/model_export.pt``) and
removes it on :meth:`~TuneSession.close` (a context manager), so a trial leaves
no ``hardseg-trial-<run id>-*`` folder behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from ray import tune

from hardseg import keys
from hardseg.platform.tracking import MLflowEpochLogger, set_tags
from hardseg.platform.runs import TrialStopped
from hardseg.trainables.local import LocalSession
from hardseg.trainables.best import BestStore
from hardseg.trainables.checkpoints import CHECKPOINT_FILE


class TuneSession(LocalSession):
    """Rank 0 of 1 in a Tune trial (see the module docstring).

    ``forward`` picks what Tune may see of a report (None: nothing, e.g. the final epoch,
    which the trial reports itself once its run is closed); ``epochs`` is the run's length in
    its ``unit`` (epochs or iterations), for the reason of a stop; ``best_dir``: where the best model
    is kept (a local path or URI; None: in memory). After training, ``last`` is the last report and ``kept``
    the copy of the latest checkpoint (None before the first).
    """

    def __init__(self, logger: MLflowEpochLogger, forward: Callable[[dict[str, Any]], dict[str, Any] | None],
                 epochs: int, device: str | None = None, best_dir: str | None = None, unit: str = "epoch"):
        super().__init__(device=device)
        self.logger, self.forward, self.epochs, self.unit = logger, forward, epochs, unit
        if best_dir is not None:  # the best model once, in the sweep's storage (a restored trial reads it)
            self.best_store = BestStore.at(best_dir)
        self.last: dict[str, Any] = {}
        self.kept: Path | None = None

    def load_checkpoint(self) -> dict[str, Any] | None:
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        epoch = int(state.get("epoch", -1)) + 1  # the checkpoint's last completed epoch (1-based)
        set_tags(self.logger.client, self.logger.run_id, {keys.RESUMED_FROM: str(epoch)})
        print(f"[hardseg] trial run {self.logger.run_id}: resuming after epoch {epoch} from {ckpt.path}", flush=True)
        return state

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.logger.log(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            self._keep(checkpoint_dir)
        self.last = dict(metrics)
        kept = self.forward(metrics)
        if kept is None:
            return
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        try:
            tune.report(kept, checkpoint=checkpoint)
        except SystemExit:  # Tune stops the trial: the scheduler's decision
            raise TrialStopped(f"stopped by the scheduler after {self.unit} {metrics.get(self.unit)} of "
                               f"{self.epochs}") from None

    def log(self, metrics: dict[str, Any]) -> None:
        """Per-iteration logs and visuals go to the trial's MLflow run only."""
        self.logger.log(metrics, None)

    def _keep(self, checkpoint_dir: Path) -> None:
        """Replace the kept copy by ``checkpoint_dir`` (the loop removes its own folder after the report)."""
        if self.kept is None:
            self.kept = Path(tempfile.mkdtemp(prefix=f"hardseg-trial-{self.logger.run_id}-"))
        shutil.rmtree(self.kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, self.kept)

    def close(self) -> None:
        """Remove the kept checkpoint copy (once the trial has logged its final artifacts)."""
        if self.kept is not None:
            shutil.rmtree(self.kept, ignore_errors=True)
            self.kept = None

    def __enter__(self) -> "TuneSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

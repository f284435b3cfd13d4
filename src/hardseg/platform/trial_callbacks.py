"""The sweep trial's callback on its TorchTrainer's controller: the reports Tune may see.

Kept apart from :mod:`hardseg.platform.trial`, and free of Ray Tune at import: the controller and
every training worker unpickle this callback, so they import this module (and only Ray Train and
:mod:`hardseg.keys` and the schedule's unit names with it), not the trial's MLflow, Optuna-facing and torch modules nor Ray Tune
(:mod:`hardseg.platform.train_callbacks` explains).
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from hardseg import keys
from hardseg.trainables.schedule import EPOCH


def for_tune(metrics: dict[str, Any], wanted: list[str], final_epoch: int, unit: str = EPOCH) -> dict[str, Any] | None:
    """Reports Tune may see during training: numeric, with every searcher metric (Tune aborts the
    sweep otherwise; per-iteration logs have none), and not the final one (``final_epoch`` in the run's
    ``unit``, epochs or iterations), which the trial reports itself after closing its run (Tune stops a
    trial as soon as it sees its last result)."""
    if keys.FAILURE in metrics or any(m not in metrics for m in wanted) or int(metrics.get(unit, 0)) >= final_epoch:
        return None
    return numeric(metrics)


def numeric(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TuneForwarder(UserCallback):
    """What Ray Tune's ``TuneReportCallback`` does (on a TorchTrainer driven by a trial), for the reports
    :func:`for_tune` lets through.

    Made in the trial's process, it keeps only what Tune's callback puts its reports into (the trial
    session's queue, a Ray actor handle) and the key of the checkpoint's path: subclassing Tune's
    callback would make the controller and each worker import Ray Tune to unpickle it.
    """

    def __init__(self, wanted: list[str], final_epoch: int, unit: str = EPOCH) -> None:
        # local: Ray Tune is loaded in the trial's process already; this module must not need it (docstring)
        from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

        tune_callback = TuneReportCallback()  # raises outside a Tune session
        self.queue = tune_callback._training_actor_item_queue
        self.checkpoint_key = CHECKPOINT_PATH_KEY
        self.wanted, self.final_epoch, self.unit = wanted, final_epoch, unit

    def after_report(self, run_context, metrics, checkpoint) -> None:
        kept = for_tune(metrics[0] if metrics else {}, self.wanted, self.final_epoch, self.unit)
        if kept is None:
            return
        if checkpoint is not None:  # already in storage: Tune gets its path, as from its own callback
            kept[self.checkpoint_key] = checkpoint.path
        self.queue.put(kept)

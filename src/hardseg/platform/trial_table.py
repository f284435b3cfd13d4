"""The live table of a sweep's trials, printed by a Ray Tune callback."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback


def stopped_early(reached: int, length: int) -> bool:
    """Whether a trial that ended without an error after ``reached`` of the sweep's ``length`` epochs (or
    iterations) was stopped by the scheduler: it ends before the length only then."""
    return reached < length


class TrialTable(Callback):
    """A live table of trials (trial, strategy, params, epoch, metric, status) as a Tune callback: at most
    one print per ``every_s`` while trials report, one when a trial ends, and one at the end of the sweep
    if anything changed since the last print. A trial ends DONE, STOPPED (by the scheduler, before
    ``length``, the trials' epochs or iterations) or FAILED."""

    def __init__(self, metric: str, length: int, every_s: float = 10.0) -> None:
        self.metric, self.length, self.every_s = metric, length, every_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.last_print = 0.0
        self.changed = False

    def _row(self, trial, **kw) -> None:
        row = self.rows.setdefault(trial.trial_id, {"config": dict(trial.config), "epoch": 0, "value": None})
        row.update(kw)
        self.changed = True

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial, status="RUNNING")
        self._print()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._row(trial, status="RUNNING", epoch=result.get("epoch", result.get("iteration", 0)), value=result.get(self.metric))
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        reached = self.rows.get(trial.trial_id, {}).get("epoch", 0)
        self._row(trial, status="STOPPED" if stopped_early(reached, self.length) else "DONE")
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial, status="FAILED")
        self._print(force=True)

    def on_experiment_end(self, trials, **info) -> None:
        for t in trials:
            if t.status == "TERMINATED" and self.rows.get(t.trial_id, {}).get("status") == "RUNNING":
                self._row(t, status="STOPPED")
        if self.changed:
            self._print(force=True)

    def _print(self, force: bool = False) -> None:
        if not force and time.time() - self.last_print < self.every_s:
            return
        self.last_print = time.time()
        self.changed = False
        print(format_table(self.rows, self.metric), flush=True)


def format_table(rows: dict[str, dict[str, Any]], metric: str) -> str:
    lines = [f"{'trial':<12} {'strategy':<22} {'epoch':>5} {metric:>10} {'status':<8} params"]
    for tid, r in rows.items():
        cfg = r["config"]
        strategy = str(cfg.get("strategies", cfg.get("config", "-")))  # a study's confirmation: the configuration
        params = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in cfg.items() if k not in ("strategies", "config"))
        value = f"{r['value']:.4f}" if isinstance(r.get("value"), float) else "-"
        lines.append(f"{tid:<12} {strategy:<22} {r.get('epoch', 0):>5} {value:>10} {r.get('status', '-'):<8} {params}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)

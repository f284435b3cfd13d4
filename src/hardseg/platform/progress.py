"""The live table of a sweep's trials, printed by a Ray Tune callback."""

from __future__ import annotations

import time
from typing import Any


class ProgressTable:
    """A live table of trials (trial, strategy, params, epoch, metric, status) as a Tune callback."""

    def __new__(cls, metric: str, every_s: float = 10.0):
        from ray.tune import Callback

        class _Table(Callback):
            def __init__(self) -> None:
                self.rows: dict[str, dict[str, Any]] = {}
                self.last_print = 0.0

            def _row(self, trial, **kw) -> None:
                row = self.rows.setdefault(trial.trial_id, {"config": dict(trial.config), "epoch": 0, "value": None})
                row.update(kw)

            def on_trial_start(self, iteration, trials, trial, **info) -> None:
                self._row(trial, status="RUNNING")
                self._print()

            def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
                self._row(trial, status="RUNNING", epoch=result.get("epoch", 0), value=result.get(metric))
                self._print()

            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                self._row(trial, status="DONE")
                self._print(force=True)

            def on_trial_error(self, iteration, trials, trial, **info) -> None:
                self._row(trial, status="FAILED")
                self._print(force=True)

            def on_experiment_end(self, trials, **info) -> None:
                for t in trials:
                    if t.status == "TERMINATED" and self.rows.get(t.trial_id, {}).get("status") == "RUNNING":
                        self._row(t, status="STOPPED")
                self._print(force=True)

            def _print(self, force: bool = False) -> None:
                if not force and time.time() - self.last_print < every_s:
                    return
                self.last_print = time.time()
                print(format_table(self.rows, metric), flush=True)

        return _Table()


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

"""Reports of sweeps and ablations, read from MLflow only (no Ray, no torch).

* :mod:`~hardseg.reports.stats`: mean ± t-CI, paired t-test, power, MDE, seeds needed, Holm and
  Benjamini-Hochberg adjustments, the paired-seed minimum for a verdict.
* :mod:`~hardseg.reports.collect`: :func:`find_parent` (a sweep's parent run by name or id)
  and :func:`runs_frame` (one row per trial run: status, reason, seed, final metrics, sampled params).
* :mod:`~hardseg.reports.tables`: :func:`ablation_table` (per strategy: mean, CI, paired Δ vs a
  baseline, p, MDE, seeds needed) and :func:`to_markdown`.
* :mod:`~hardseg.reports.markdown`: the Markdown report (``report.md`` + ``runs.parquet``, also logged
  to the parent run under ``report/``): header, answer, tables, cross-domain section.
* :mod:`~hardseg.reports.answer`: the paragraph every report opens with (best strategy, corrected Δ, verdict).
* :mod:`~hardseg.reports.plots`: PNG figures (forest plot of paired Δ, metric bars, per-class IoU,
  strategy × domain mIoU).
* :mod:`~hardseg.reports.study`: the report of ``hardseg study`` (answer first, winner's curse measured).
* :mod:`~hardseg.reports.html`: :func:`render_html`, one self-contained HTML page of a report.
* :mod:`~hardseg.reports.publish`: :func:`write_report` with the figures and ``report.html`` too.
* :mod:`~hardseg.reports.plan`: ``hardseg plan``, the paired seeds and GPU-hours a verdict needs.

The names below are imported lazily, so ``hardseg.reports.stats`` alone stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReportError": "collect", "open_client": "collect", "find_parent": "collect", "runs_frame": "collect",
    "ablation_table": "tables", "to_markdown": "tables", "write_report": "publish", "default_metrics": "tables",
    "render_html": "html", "write_study_report": "study",
}
__all__ = [*_EXPORTS, "stats"]


# Lazy on purpose (PEP 562): `import hardseg.reports.stats` runs this file first, and it takes 1.4 s
# alone against 3.9 s for hardseg.reports.publish (mlflow, matplotlib, optuna; python -X importtime).
def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"hardseg.reports.{_EXPORTS[name]}"), name)
    if name == "stats":
        return importlib.import_module("hardseg.reports.stats")
    raise AttributeError(f"module 'hardseg.reports' has no attribute {name!r}")

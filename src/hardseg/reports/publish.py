"""The full report of a sweep: ``report.md``, ``runs.parquet``, the PNG figures and ``report.html``.

:func:`write_report` is :func:`hardseg.reports.tables.write_report` plus the figures of
:mod:`hardseg.reports.plots` and the self-contained page of :mod:`hardseg.reports.html`; every
file is also logged on the sweep's parent run under ``report/``. Used by ``hardseg report``.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hardseg.reports import plots
from hardseg.reports.html import render_html
from hardseg.reports.tables import build_report, save_report

CAPTIONS = {
    "metrics_png": "Metrics per strategy: mean over FINISHED seeds, error bars ± CI half-width (none with one seed).",
    "per_class_png": "Per-class IoU (val) per strategy: mean over FINISHED seeds ± CI half-width.",
    "domains_png": "Mean mIoU per strategy on the clean validation set and each evaluation domain.",
}


def write_report(client: MlflowClient, parent_run: Run, out_dir: Path | str, metrics: list[str] | None = None,
                 baseline: str = "ce", alpha: float = 0.05, require_baseline: bool = False) -> dict[str, Path]:
    """Write and log (under ``report/``) the whole report of ``parent_run`` to ``out_dir``.

    Arguments and errors as :func:`hardseg.reports.tables.write_report` (nothing is written on an
    error). Returns ``{"markdown", "parquet", "metrics_png", "html"}`` paths, plus ``"per_class_png"``
    when runs logged ``val/iou/<class>`` and ``"domains_png"`` when they logged ``<domain>/miou``.
    """
    df, table, markdown = build_report(client, parent_run, metrics, baseline, alpha, require_baseline)
    out = Path(out_dir)
    paths = save_report(df, markdown, out)
    figures = {
        "metrics_png": plots.metric_bars(table, list(table.attrs["metrics"]), out / "metrics.png"),
        "per_class_png": plots.per_class_bars(df, out / "per_class.png", alpha=alpha, baseline=baseline),
        "domains_png": plots.domain_matrix(df, out / "domains.png", alpha=alpha, baseline=baseline),
    }
    paths.update({k: p for k, p in figures.items() if p is not None})
    paths["html"] = out / "report.html"
    images = {CAPTIONS[k]: p for k, p in figures.items() if p is not None}
    paths["html"].write_text(render_html(markdown, images), encoding="utf-8")
    for path in paths.values():
        client.log_artifact(parent_run.info.run_id, str(path), artifact_path="report")
    return paths

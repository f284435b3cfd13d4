"""The full report of a sweep: ``report.md``, ``runs.parquet``, the PNG figures and ``report.html``.

:func:`write_report` is :func:`hardseg.reports.markdown.write_report` plus the figures of
:mod:`hardseg.reports.plots`, for searches (not ablations) the "Search" section of
:mod:`hardseg.reports.search` (best trials, Optuna importances, slice plot), the HL maps of
the best HL run (:mod:`hardseg.reports.images`) and the self-contained page of
:mod:`hardseg.reports.html`; every file is also logged on the sweep's parent run under
``report/``. Used by ``hardseg report``.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.reports import plots, search
from hardseg.reports.html import render_html
from hardseg.reports.images import HL_PANEL_KEY, best_hl_run, hl_maps_figure, latest_image
from hardseg.reports.markdown import build_report, save_report

# A run's description in the MLflow UI (Markdown, shown on the run's page and as the tooltip of its name).
NOTE_MAX_CHARS = 5000  # MLflow keeps tag values up to 8,000 characters

CAPTIONS = {
    "metrics_png": "Metrics per strategy: mean over FINISHED seeds, error bars ± CI half-width (none with one seed).",
    "per_class_png": "Per-class IoU (val) per strategy: mean over FINISHED seeds ± CI half-width.",
    "domains_png": "Mean mIoU per strategy on the clean validation set and each evaluation domain.",
    "slice_png": "Searched parameters against the sweep's metric, one colour per strategy.",
    "forest_png": "Paired differences vs the baseline: mean Δ over shared seeds with its 95 % CI, per strategy × "
                  "metric and domain; filled = significant after the report's correction, hollow = not "
                  "significant, grey = too few paired seeds for a test.",
}


def write_report(client: MlflowClient, parent_run: Run, out_dir: Path | str, metrics: list[str] | None = None,
                 baseline: str = "ce", alpha: float = 0.05, require_baseline: bool = False,
                 correction: str = "holm", lead: str | None = None) -> dict[str, Path]:
    """Write and log (under ``report/``) the whole report of ``parent_run`` to ``out_dir``.

    Arguments and errors as :func:`hardseg.reports.markdown.write_report` (nothing is written on an
    error). Returns ``{"markdown", "parquet", "metrics_png", "html"}`` paths, plus ``"per_class_png"``
    when runs logged ``val/iou/<class>``, ``"domains_png"`` when they logged ``<domain>/miou``,
    ``"forest_png"`` when a strategy has a Δ vs the baseline, ``"slice_png"`` for a search over numeric
    parameters and ``"hl_maps_png"`` when a FINISHED HL
    run logged its maps. ``lead``: Markdown put first (``hardseg study``'s answer); the sweep's own
    report then follows with every heading one level down.
    """
    df, table, markdown = build_report(client, parent_run, metrics, baseline, alpha, require_baseline, correction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params, tags = parent_run.data.params, parent_run.data.tags
    metric, mode = params.get("sweep.metric") or keys.VAL_MIOU, params.get("sweep.mode") or "max"
    figures = {
        "forest_png": plots.forest_plot(table, out / "forest.png"),
        "metrics_png": plots.metric_bars(table, list(table.attrs["metrics"]), out / "metrics.png"),
        "per_class_png": plots.per_class_bars(df, out / "per_class.png", alpha=alpha, baseline=baseline),
        "domains_png": plots.domain_matrix(df, out / "domains.png", alpha=alpha, baseline=baseline),
    }
    captions = dict(CAPTIONS)
    if tags.get(keys.KIND, keys.SWEEP_KIND) != keys.ABLATION:
        dists = search.distributions(params)
        markdown += "\n" + search.search_markdown(df, dists, metric, mode)
        figures["slice_png"] = search.slice_plot(df, dists, metric, out / "slice.png")
    best_hl = best_hl_run(df, metric, mode)
    fetched = latest_image(client, best_hl["run_id"], HL_PANEL_KEY, out / "hl_panel.png") if best_hl is not None \
        else None
    if fetched is not None:
        panel, step = fetched
        offset = float(client.get_run(best_hl["run_id"]).data.params.get("strategy_params.hl.offset", 0.1))
        figures["hl_maps_png"] = hl_maps_figure(panel, out / "hl_maps.png", offset,
                                                f"HL maps: best HL run, trial {best_hl['trial_id']}, epoch {step}")
        panel.unlink()
        captions["hl_maps_png"] = (f"HL maps of the best HL run (trial {best_hl['trial_id']}, {metric} "
                                   f"{best_hl[metric]:.3f}, epoch {step}): image | ground truth | prediction | "
                                   "hardness w (dark 0.1 = easy, bright 1.1 = hard).")
        markdown += (f"\n## HL maps\n\n{captions['hl_maps_png']} File: `hl_maps.png`; every epoch's maps are "
                     f"images of MLflow run `{best_hl['run_id']}`.\n")
    if lead:
        markdown = lead.rstrip() + "\n\n" + "\n".join("#" + line if line.startswith("#") else line
                                                       for line in markdown.splitlines()) + "\n"
    paths = save_report(df, markdown, out)
    paths.update({k: p for k, p in figures.items() if p is not None})
    paths["html"] = out / "report.html"
    images = {captions[k]: p for k, p in figures.items() if p is not None}
    paths["html"].write_text(render_html(markdown, images), encoding="utf-8")
    for path in paths.values():
        client.log_artifact(parent_run.info.run_id, str(path), artifact_path="report")
    client.set_tag(parent_run.info.run_id, keys.NOTE, parent_description(markdown))
    return paths


def parent_description(markdown: str, max_chars: int = NOTE_MAX_CHARS) -> str:
    """The sweep's parent-run description (``mlflow.note.content``): what the sweep found, first.

    The report up to the end of its first section: the opening lines (runs, statuses, best
    trial; an answer paragraph placed there shows up here too) and the first table (the
    validation metrics, mean ± CI and Δ vs the baseline), cut at a line end to ``max_chars``,
    then where the whole report is.
    """
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    sections = [i for i, line in enumerate(lines) if line.startswith("## ")]
    text = "\n".join(lines[:sections[1] if len(sections) > 1 else len(lines)]).strip()
    if len(text) > max_chars:
        text = text[:text.rfind("\n", 0, max_chars)].rstrip() + "\n\n…"
    return text + ("\n\nThe whole report (every domain, failed runs, figures): artifacts `report/report.md` and "
                   "`report/report.html` of this run, or `hardseg report NAME`.")

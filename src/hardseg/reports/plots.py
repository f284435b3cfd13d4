"""PNG figures of a sweep's report: metric bars, per-class IoU bars, the strategy × domain matrix, and the
forest plot of paired differences vs the baseline.

Drawn with matplotlib's Agg canvas on :class:`matplotlib.figure.Figure` objects (no pyplot, no
display, no global state). Every mean and CI comes from :func:`hardseg.reports.stats.mean_ci`
over FINISHED runs, one value per seed, exactly as in :func:`hardseg.reports.tables.ablation_table`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hardseg import keys
from hardseg.reports import stats
from hardseg.reports.collect import metric_columns
from hardseg.reports.domains import domain_columns
from hardseg.reports.tables import label, per_seed

DPI = 110


def _color(i: int) -> Any:
    return matplotlib.colormaps["tab10"](i % 10)


def _mean_ci(df: pd.DataFrame, metrics: list[str], alpha: float,
             baseline: str | None) -> dict[str, dict[str, stats.MeanCI | None]]:
    """{strategy: {metric: mean_ci over FINISHED seeds, or None without a value}}, baseline first."""
    finished = df[df["status"] == "FINISHED"]
    labels = finished["strategies"].map(label)
    order = list(dict.fromkeys(label(s) for s in df["strategies"]))
    if baseline in order:
        order.remove(baseline)
        order.insert(0, baseline)
    out: dict[str, dict[str, stats.MeanCI | None]] = {}
    for s in order:
        rows = finished[labels == s]
        out[s] = {}
        for m in metrics:
            values = list(per_seed(rows, m).values())
            out[s][m] = stats.mean_ci(values, confidence=1.0 - alpha) if values else None
    return out


def _bars(groups: list[str], bars: dict[str, list[tuple[float | None, float | None]]], path: Path, title: str,
          ylabel: str) -> Path:
    """Grouped bars: ``bars[strategy][i] = (mean, half_width)`` for ``groups[i]``; None mean: no bar,
    None half-width: no error bar."""
    width = 0.8 / max(len(bars), 1)
    fig = Figure(figsize=(min(16.0, max(6.0, 1.5 + 0.35 * len(groups) * max(len(bars), 1))), 4.2), dpi=DPI)
    ax = fig.add_subplot()
    x = np.arange(len(groups), dtype=float)
    for i, (strategy, cells) in enumerate(bars.items()):
        pos = x - 0.4 + width * (i + 0.5)
        keep = [j for j, (mean, _) in enumerate(cells) if mean is not None]
        ax.bar(pos[keep], [cells[j][0] for j in keep], width, label=strategy, color=_color(i))
        err = [j for j in keep if cells[j][1] is not None]
        if err:
            ax.errorbar(pos[err], [cells[j][0] for j in err], yerr=[cells[j][1] for j in err], fmt="none",
                        ecolor="black", capsize=3, linewidth=1)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(bars), 4) or 1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def metric_bars(table: pd.DataFrame, metrics: list[str], path: Path | str) -> Path:
    """One group per metric, one bar per strategy of an :func:`ablation_table`: its ``mean``, error bar
    ± ``half_width`` (none where the CI is None, e.g. one seed; no bar without a FINISHED value)."""
    bars = {str(s): [(table.loc[s, (m, "mean")], table.loc[s, (m, "half_width")]) for m in metrics]
            for s in table.index}
    conf = f"{1 - table.attrs.get('alpha', 0.05):.0%}"
    return _bars(list(metrics), bars, Path(path), f"mean ± {conf} CI half-width over seeds", "value")


def per_class_bars(df: pd.DataFrame, path: Path | str, prefix: str = keys.VAL_PREFIX + keys.IOU_PREFIX,
                   alpha: float = 0.05, baseline: str | None = "ce") -> Path | None:
    """Per-class IoU (columns ``<prefix><class>`` of a :func:`runs_frame`) per strategy: mean over
    FINISHED seeds ± CI half-width of :func:`stats.mean_ci`. None (nothing written) without such columns."""
    metrics = [c for c in metric_columns(df) if c.startswith(prefix)]
    if not metrics:
        return None
    cis = _mean_ci(df, metrics, alpha, baseline)
    bars = {s: [(None, None) if c is None else (c.mean, c.half_width) for c in per.values()]
            for s, per in cis.items()}
    return _bars([m[len(prefix):] for m in metrics], bars, Path(path),
                 f"per-class IoU ({prefix}*): mean ± {1 - alpha:.0%} CI half-width", "IoU")


def domain_matrix(df: pd.DataFrame, path: Path | str, alpha: float = 0.05,
                  baseline: str | None = "ce") -> Path | None:
    """Heatmap strategy × domain of the mean mIoU over FINISHED seeds: ``best/val/miou`` (clean; ``val/miou``
    for runs without it) then each ``<domain>/miou``, values annotated (``n/a`` without a value). None
    (nothing written) without domains."""
    domains = domain_columns(df)
    if not domains:
        return None
    # clean = the model the domains were evaluated with: the best epoch's (older runs: the last epoch's)
    clean = next((c for c in (keys.BEST_PREFIX + keys.VAL_MIOU, keys.VAL_MIOU) if c in df.columns), None)
    columns = ([clean] if clean else []) + domains
    cis = _mean_ci(df, columns, alpha, baseline)
    strategies = list(cis)
    grid = np.array([[math.nan if cis[s][m] is None else cis[s][m].mean for m in columns] for s in strategies],
                    dtype=float)
    fig = Figure(figsize=(max(5.0, 1.5 + 1.3 * len(columns)), max(2.5, 1.0 + 0.5 * len(strategies))), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    finite = grid[np.isfinite(grid)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i in range(len(strategies)):
        for j in range(len(columns)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=9,
                    color="white" if math.isnan(v) or v < middle else "black")
    ax.set_xticks(range(len(columns)), ["clean" if m == clean else m.rsplit("/", 1)[0] for m in columns])
    ax.set_yticks(range(len(strategies)), strategies)
    ax.set_title("mean mIoU per strategy and domain")
    fig.colorbar(image, ax=ax, label="mIoU")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def forest_plot(table: pd.DataFrame, path: Path | str, metrics: list[str] | None = None) -> Path | None:
    """Paired Δ vs the baseline of an :func:`ablation_table`: one panel per metric group (``val`` and each
    evaluation domain), one row per strategy × metric, the mean Δ with its 95 % paired t-interval
    (``delta_ci_low``/``delta_ci_high``; none with one paired seed), a line at 0. Filled marker:
    significant after the report's correction; hollow: tested, not significant; grey: fewer than
    :data:`stats.MIN_PAIRED_SEEDS` paired seeds (no test). None (nothing written) without any Δ."""
    a = table.attrs
    metrics = list(metrics or a["metrics"])
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for m in metrics:
        for s in table.index:
            c = table.loc[s, m].to_dict()
            if s != a["baseline"] and c["delta"] is not None:
                groups.setdefault(m.split("/", 1)[0] if "/" in m else "metrics", []).append((s, m, c))
    if not groups:
        return None
    strategies = [s for s in table.index if s != a["baseline"]]
    heights = [max(1, len(rows)) for rows in groups.values()]
    fig = Figure(figsize=(7.5, 1.2 + 0.28 * sum(heights) + 0.5 * len(groups)), dpi=DPI)
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (group, rows) in zip(axes, groups.items()):
        for y, (s, m, c) in enumerate(rows):
            color = _color(strategies.index(s) if s in strategies else 0)
            if c["delta_ci_low"] is not None:
                ax.plot([c["delta_ci_low"], c["delta_ci_high"]], [y, y], color=color if c["tested"] else "grey",
                        linewidth=1.5)
            face = color if c["significant"] else "white"
            ax.plot([c["delta"]], [y], marker="o", markersize=6, linestyle="none",
                    markerfacecolor=face if c["tested"] else "lightgrey",
                    markeredgecolor=color if c["tested"] else "grey")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [f"{s} · {m.split('/', 1)[-1]}" for s, m, _ in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_title(group, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(f"Δ vs {a['baseline']} (mean over paired seeds, 95 % CI)")
    corr = {"holm": "Holm", "bh": "BH", "none": "un"}[a.get("correction", "holm")]
    fig.suptitle(f"paired differences vs {a['baseline']}: filled = significant ({corr}-adjusted), hollow = n.s., "
                 f"grey = < {stats.MIN_PAIRED_SEEDS} paired seeds (no test)", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path

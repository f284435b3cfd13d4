"""The report's cross-domain matrix: strategy × evaluation domain, with relative robustness.

Each trial logs, at its last epoch, the best epoch's model on every evaluation
domain (``<domain>/miou``; see :mod:`hardseg.trainables.evaluation`) and that model's
clean score ``best/val/miou``, which is also the row's ``val/miou``
(:func:`hardseg.reports.collect.selected_checkpoint`: one model per row). The
matrix has one row per strategy and the columns

* ``clean``: the best model's ``val`` mIoU;
* one per domain (``fog-1`` … ``fog-5``, ``night-3``, ``target``, a folder's name), ordered
  by shift family and severity;
* ``robustness <family>``: per run, the mean over the family's evaluated severities of
  shifted / clean mIoU (:func:`hardseg.robustness.robustness`, the formula the
  training loop logs), then over seeds.

Cells are mean ± CI half-width over FINISHED seeds, as in the ablation table
(:func:`hardseg.reports.tables.ablation_table`); one seed has no CI.
"""

from __future__ import annotations

import math

import pandas as pd

from hardseg import keys
from hardseg.reports.collect import metric_columns
from hardseg.reports.tables import NO_CI, mean_cell, md_cell, ablation_table
from hardseg.robustness import robustness, shift_family

CLEAN = "clean"


def domain_columns(df: pd.DataFrame, metric: str = keys.MIOU) -> list[str]:
    """``<domain>/<metric>`` columns of the runs, by family then severity (``fog-1`` < ``fog-3`` < ``night-1``)."""
    cols = [c for c in metric_columns(df) if c.endswith(f"/{metric}") and c.count("/") == 1
            and not c.startswith(keys.NOT_DOMAIN_PREFIXES)]

    def order(col: str) -> tuple[str, int]:
        domain = col.split("/", 1)[0]
        return shift_family(domain) or (domain, 0)

    return sorted(cols, key=order)


def with_robustness(df: pd.DataFrame, metric: str = keys.MIOU) -> tuple[pd.DataFrame, list[str]]:
    """``df`` plus a ``clean`` column and ``robustness/<family>/<metric>`` per run; the robustness column names."""
    best, val = f"{keys.BEST_PREFIX}{keys.VAL_PREFIX}{metric}", f"{keys.VAL_PREFIX}{metric}"
    clean = df[best] if best in df.columns else pd.Series(math.nan, index=df.index)
    if val in df.columns:
        clean = clean.fillna(df[val])
    clean = clean.astype(float)
    domains = domain_columns(df, metric)
    per_run = [robustness({c: row[c] for c in domains}, metric, clean=c) for (_, row), c in zip(df.iterrows(), clean)]
    names = sorted({k for r in per_run for k in r})
    # One concat: columns added one by one fragment the frame (pandas' PerformanceWarning in the report).
    added = pd.DataFrame({CLEAN: clean, **{n: [r.get(n, math.nan) for r in per_run] for n in names}}, index=df.index)
    return pd.concat([df.drop(columns=[c for c in added.columns if c in df.columns]), added], axis=1).copy(), names


def cross_domain_section(df: pd.DataFrame, baseline: str = "ce", alpha: float = 0.05, metric: str = keys.MIOU,
                         correction: str = "holm") -> str:
    """The ``## Cross-domain`` Markdown section; empty when no run logged an evaluation domain."""
    domains = domain_columns(df, metric)
    if not domains or df.empty:
        return ""
    frame, robust = with_robustness(df, metric)
    columns = [CLEAN, *domains, *robust]
    table = ablation_table(frame, columns, baseline=baseline, alpha=alpha, correction=correction)
    seeds = table.attrs["seeds"]
    head = ["strategy", "seeds", f"clean (val {metric})", *(c.split("/", 1)[0] for c in domains),
            *(f"robustness {c.split('/')[1]}" for c in robust)]
    lines = ["## Cross-domain", "",
             f"{metric} of each run's best-epoch model (by val {metric}) on every evaluation domain; mean ± "
             f"half-width of the {1 - alpha:.0%} Student-t interval over FINISHED seeds ({NO_CI}: one seed, no "
             f"interval). Robustness <family>: per run, the mean over the family's evaluated severities of "
             f"shifted / clean {metric} (1.0 = no loss under shift), then the mean over seeds.", "",
             "| " + " | ".join(md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for strategy in table.index:
        n = seeds.get(strategy, 0)
        cells = [mean_cell(table.loc[strategy, c].to_dict(), n, best=False) for c in columns]
        lines.append("| " + " | ".join(md_cell(x) for x in [strategy, str(n), *cells]) + " |")
    return "\n".join(lines) + "\n"

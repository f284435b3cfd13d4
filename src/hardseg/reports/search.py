"""What a search found: its best trials, Optuna parameter importances and a slice plot.

Everything is rebuilt from MLflow (the guide's rule: reports read MLflow only). The
parent run stores each searched parameter as ``space.<path>`` (its YAML definition,
JSON-encoded) and every child run its sampled values as ``sampled.<path>`` tags
(``param:<path>`` columns of :func:`hardseg.reports.collect.runs_frame`). From them an
in-memory Optuna study is made, one COMPLETE trial per FINISHED run, and
``optuna.importance.get_param_importances`` ranks the parameters with Optuna's
fANOVA evaluator (seeded, so a report is reproducible).

Which trials count: FINISHED runs only. ASHA-stopped trials carry the value of an
earlier epoch, which would credit a parameter for a short budget rather than a
good setting (ray-mlflow-notes.md); they are counted, not used.

Conditional parameters (``strategy_params.hl.lam`` exists only in HL trials) cannot be
ranked against each other over all trials: importances are computed once over the
parameters every counted trial has (usually ``strategies`` and ``train.lr``) and once
per strategy over that strategy's trials and parameters.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import pandas as pd
from matplotlib.figure import Figure

from hardseg import keys
from hardseg.reports.collect import PARAM_PREFIX
from hardseg.reports.tables import label, md_cell

MIN_TRIALS = 3  # fewer trials than this: no importance (a forest on 2 points explains nothing)
DPI = 110


def _choice(value: Any) -> Any:
    """A categorical value Optuna accepts (lists, e.g. a strategy composition, become JSON text)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def distributions(parent_params: dict[str, str]) -> dict[str, optuna.distributions.BaseDistribution]:
    """``{path: Optuna distribution}`` of the searched parameters logged on a sweep's parent run.

    Fixed values and one-choice categoricals are left out (nothing to rank).
    """
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, text in parent_params.items():
        if not key.startswith(keys.SPACE_PREFIX):
            continue
        spec, path = json.loads(text), key[len(keys.SPACE_PREFIX):]
        if "categorical" in spec:
            choices = tuple(_choice(c) for c in spec["categorical"])
            if len(choices) > 1:
                out[path] = optuna.distributions.CategoricalDistribution(choices)
        elif "int" in spec:
            low, high = spec["int"]
            out[path] = optuna.distributions.IntDistribution(low, high, log=bool(spec.get("log")),
                                                             step=spec.get("step") or 1)
        else:
            kind = "loguniform" if "loguniform" in spec else "uniform"
            low, high = spec[kind]
            out[path] = optuna.distributions.FloatDistribution(low, high, log=kind == "loguniform",
                                                               step=spec.get("step"))
    return out


def _finished(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[(df["status"] == "FINISHED") & df[metric].notna()] if metric in df.columns else df.iloc[:0]


def importances(df: pd.DataFrame, dists: dict[str, optuna.distributions.BaseDistribution], metric: str,
                mode: str = "max", params: list[str] | None = None, seed: int = 0) -> dict[str, float] | None:
    """Optuna fANOVA importances (summing to 1) of ``params`` for ``metric`` over the FINISHED runs of
    ``df`` that have every one of them; None with fewer than :data:`MIN_TRIALS` such runs or nothing
    that varies. ``params`` None: the searched parameters every FINISHED run has."""
    runs = _finished(df, metric)
    if params is None:
        params = [p for p in dists if PARAM_PREFIX + p in runs.columns and runs[PARAM_PREFIX + p].notna().all()]
    params = [p for p in params if PARAM_PREFIX + p in runs.columns]
    runs = runs.dropna(subset=[PARAM_PREFIX + p for p in params])
    params = [p for p in params if runs[PARAM_PREFIX + p].map(_choice).nunique() > 1]
    if len(runs) < MIN_TRIALS or not params:
        return None
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in runs.iterrows():
        values = {p: _choice(row[PARAM_PREFIX + p]) for p in params}
        values = {p: (int(v) if isinstance(dists[p], optuna.distributions.IntDistribution) else v)
                  for p, v in values.items()}
        study.add_trial(optuna.trial.create_trial(params=values, distributions={p: dists[p] for p in params},
                                                  value=float(row[metric])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, params=params))


def best_trials(df: pd.DataFrame, metric: str, mode: str = "max", k: int = 5) -> pd.DataFrame:
    """The ``k`` best FINISHED runs by ``metric``: trial, strategy, metric and sampled parameters."""
    runs = _finished(df, metric).sort_values(metric, ascending=mode != "max").head(k)
    cols = [c for c in runs.columns if c.startswith(PARAM_PREFIX) and c != PARAM_PREFIX + "strategies"
            and runs[c].notna().any()]
    out = runs[["trial_id", "strategies", metric, *cols]].copy()
    out["strategies"] = out["strategies"].map(label)
    return out.rename(columns={c: c[len(PARAM_PREFIX):] for c in cols})


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return md_cell(v)


def search_markdown(df: pd.DataFrame, dists: dict[str, optuna.distributions.BaseDistribution], metric: str,
                    mode: str = "max") -> str:
    """The report's "Search" section: best trials and importances, global and per strategy."""
    counted = _finished(df, metric)
    lines = ["## Search", "",
             f"{len(counted)} of {len(df)} trials FINISHED with `{metric}`; only those are ranked (ASHA-stopped "
             "trials report an earlier epoch's value). Importances: Optuna's fANOVA over those trials "
             f"(seeded); at least {MIN_TRIALS} trials with a varying parameter are needed.", "",
             "### Best trials", ""]
    best = best_trials(df, metric, mode)
    if best.empty:
        lines += ["No FINISHED trial.", ""]
    else:
        lines.append("| " + " | ".join(md_cell(c) for c in best.columns) + " |")
        lines.append("|" + "---|" * len(best.columns))
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in best.itertuples(index=False)]
        lines.append("")
    lines += ["### Parameter importances", "", "| trials | parameter | importance |", "|---|---|---|"]
    groups: list[tuple[str, pd.DataFrame, list[str] | None]] = [("all", df, None)]
    for strategy in sorted(set(counted["strategies"].map(label))):
        rows = df[df["strategies"].map(label) == strategy]
        own = [p for p in dists if p != "strategies" and PARAM_PREFIX + p in rows.columns
               and rows.loc[rows["status"] == "FINISHED", PARAM_PREFIX + p].notna().any()]
        groups.append((strategy, rows, own))
    for name, rows, params in groups:
        found = importances(rows, dists, metric, mode, params)
        n = len(_finished(rows, metric))
        if not found:
            lines.append(f"| {name} ({n}) | n/a | too few trials or nothing varied |")
        for param, value in (found or {}).items():
            lines.append(f"| {name} ({n}) | `{param}` | {value:.2f} |")
    return "\n".join(lines) + "\n"


def slice_plot(df: pd.DataFrame, dists: dict[str, optuna.distributions.BaseDistribution], metric: str,
               path: Path | str) -> Path | None:
    """One panel per numeric searched parameter: its value (log axis for log ranges) against ``metric``,
    a colour per strategy, FINISHED trials filled and ASHA-stopped ones hollow at their last value.
    None (nothing written) without a numeric parameter any run sampled."""
    numeric = [p for p, d in dists.items() if not isinstance(d, optuna.distributions.CategoricalDistribution)
               and PARAM_PREFIX + p in df.columns and df[PARAM_PREFIX + p].notna().any()]
    if not numeric or metric not in df.columns:
        return None
    labels = df["strategies"].map(label)
    strategies = sorted(set(labels))
    cols = min(3, len(numeric))
    rows = math.ceil(len(numeric) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=DPI)
    cmap = matplotlib.colormaps["tab10"]
    for i, param in enumerate(numeric):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, strategy in enumerate(strategies):
            for status, filled in (("FINISHED", True), ("KILLED", False)):
                sel = (labels == strategy) & (df["status"] == status) & df[PARAM_PREFIX + param].notna()
                sel &= df[metric].notna()
                if not sel.any():
                    continue
                x = df.loc[sel, PARAM_PREFIX + param].astype(float).to_numpy()
                y = df.loc[sel, metric].to_numpy(dtype=float)
                color = cmap(j % 10)
                ax.scatter(x, y, s=36, color=color if filled else "none", edgecolors=color,
                           label=f"{strategy}" + ("" if filled else " (stopped)"))
        if getattr(dists[param], "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle(f"{metric} vs searched parameters (hollow: stopped by ASHA, last value)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


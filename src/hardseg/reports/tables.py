"""The ablation table of a sweep: mean ± CI per strategy, paired Δ vs a baseline, and its Markdown.

Statistics come from :mod:`hardseg.reports.stats` over FINISHED runs only, one
value per seed (several FINISHED runs of one strategy and seed are averaged).
Δ is the mean paired difference over the seeds a strategy shares with the
baseline. Every Δ with at least :data:`~hardseg.reports.stats.MIN_PAIRED_SEEDS`
paired seeds is tested (paired t-test), and all tests of one table (strategies ×
metrics × domains) are one family, adjusted with Holm (default), Benjamini-Hochberg
or not at all; "significant" refers to the adjusted p. A Δ on fewer paired seeds is
shown with the seeds a test needs, never with a verdict. A Δ that is not significant
is written ``n.s.`` and never in bold (bold marks the best mean of a column, nothing
else). Runs that did not finish are listed, never dropped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from hardseg import keys
from hardseg.reports import stats
from hardseg.reports.collect import BEST_BY_VAL, FROM_HISTORY, NEVER_EVALUATED, ReportError, metric_columns

POWER = 0.8
FIELDS = ["mean", "ci_low", "ci_high", "half_width", "n", "delta", "delta_ci_low", "delta_ci_high", "p_value",
          "tested", "p_adj", "significant", "n_pairs", "sd_diff", "mde", "seeds_needed"]
DEFAULT_METRICS = [keys.VAL_PREFIX + m for m in keys.SUMMARY_METRICS]
NO_CI = "n/a (1 seed)"
SPLIT_NOTES = {
    "val": "Split: val, each run's best-by-val checkpoint (the model every table of this report reads; the "
           "checkpoint and sweep trials are selected on this split).",
    "best": "Split: val, at each run's best epoch (selected on val).",
    "test": "Split: data.test_split, held out: the best-by-val model, never used for any selection.",
}
MAX_REASON = 300


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _text(v: Any) -> str | None:
    return None if _missing(v) else str(v)


def label(strategy: Any) -> str:
    return "?" if _missing(strategy) else str(strategy)


def per_seed(rows: pd.DataFrame, metric: str) -> dict[Any, float]:
    """{seed: value} over finite values; a run without a seed counts alone (never paired)."""
    if metric not in rows.columns:
        return {}
    values: dict[Any, list[float]] = {}
    for seed, run_id, v in zip(rows["seed"], rows["run_id"], rows[metric]):
        if _missing(v) or not math.isfinite(float(v)):
            continue
        values.setdefault(f"run:{run_id}" if _missing(seed) else int(seed), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in values.items()}


def _cell_stats(values: dict[Any, float], base: dict[Any, float] | None, alpha: float) -> dict[str, Any]:
    """Mean, CI and the raw paired test of one cell; the family's correction comes later (:func:`_correct`)."""
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    out["n"], out["n_pairs"], out["significant"], out["tested"] = len(values), 0, False, False
    if not values:
        return out
    ci = stats.mean_ci(list(values.values()), confidence=1.0 - alpha)
    out.update(mean=ci.mean, ci_low=ci.low, ci_high=ci.high, half_width=ci.half_width)
    shared = sorted(k for k in values if base is not None and k in base and isinstance(k, int))
    if base is None or not shared:
        return out
    test = stats.paired_test([values[k] for k in shared], [base[k] for k in shared], alpha=alpha)
    out.update(delta=test.delta_mean, p_value=test.p_value, n_pairs=test.n, sd_diff=test.sd_diff,
               delta_ci_low=test.delta_ci_low, delta_ci_high=test.delta_ci_high,
               tested=test.n >= stats.MIN_PAIRED_SEEDS and test.p_value is not None)
    return out


def _correct(records: dict[str, dict[tuple[str, str], Any]], metrics: list[str], baseline: str, alpha: float,
             correction: str) -> tuple[int, int, float]:
    """Adjust the p-values of the tested cells as one family, set ``p_adj``/``significant``, then the MDE
    and seeds needed at the family's worst-case per-test level. Returns (comparisons, tests, that level)."""
    cells = [records[s] for s in records if s != baseline]
    keys = [(rec, m) for rec in cells for m in metrics if rec[(m, "delta")] is not None]
    tested = [(rec, m) for rec, m in keys if rec[(m, "tested")]]
    adjusted = stats.adjust_p([rec[(m, "p_value")] for rec, m in tested], correction) if tested else []
    for (rec, m), p_adj in zip(tested, adjusted):
        rec[(m, "p_adj")] = float(p_adj)
        rec[(m, "significant")] = bool(p_adj < alpha)
    level = stats.family_alpha(alpha, len(keys), correction)
    for rec, m in keys:
        n, sd, delta = rec[(m, "n_pairs")], rec[(m, "sd_diff")], rec[(m, "delta")]
        if n >= stats.MIN_PAIRED_SEEDS and sd is not None:
            rec[(m, "mde")] = stats.min_detectable_difference(sd, n, alpha=level, power=POWER)
        if n >= 2 and sd is not None:
            need = stats.seeds_needed(delta, sd, alpha=level, power=POWER)
            rec[(m, "seeds_needed")] = None if need is None else max(need, stats.MIN_PAIRED_SEEDS)
    return len(keys), len(tested), level


def ablation_table(df: pd.DataFrame, metrics: list[str], baseline: str = "ce", alpha: float = 0.05,
                   correction: str = "holm") -> pd.DataFrame:
    """One row per strategy (baseline first); columns ``(metric, field)`` for ``field`` in :data:`FIELDS`.

    ``mean``/``ci_low``/``ci_high``/``half_width``: :func:`stats.mean_ci` at 1 - alpha over the
    strategy's FINISHED seeds (CI None with one seed); ``n``: those seeds. ``delta``, ``delta_ci_*``,
    ``p_value`` (raw), ``sd_diff``: :func:`stats.paired_test` of strategy - baseline over the
    ``n_pairs`` seeds both have (None for the baseline itself). ``tested``: ``n_pairs`` ≥
    :data:`stats.MIN_PAIRED_SEEDS`; the tested cells of the whole table (strategies × metrics, domains
    included) are one family, adjusted by ``correction`` (:func:`stats.adjust_p`: holm, bh or none)
    into ``p_adj``; ``significant``: tested and ``p_adj`` < alpha. ``mde``: the smallest Δ the
    tested pairs detect with 80 % power; ``seeds_needed``: paired seeds (≥ the minimum) for 80 %
    power at the observed Δ and spread; both at :func:`stats.family_alpha`, so they hold under the
    correction. ``table.attrs`` carries what :func:`to_markdown` also prints: ``baseline``, ``alpha``,
    ``correction``, ``comparisons`` (Δ cells), ``tests`` (tested cells), ``family_alpha``,
    ``metrics``, ``seeds`` ({strategy: FINISHED seeds}), ``not_finished`` (every other run),
    ``averaged`` (strategies with several FINISHED runs of one seed), ``statuses``.
    """
    if correction not in stats.CORRECTIONS:
        raise ReportError(f"unknown correction '{correction}': use one of {', '.join(stats.CORRECTIONS)}")
    finished = df[df["status"] == "FINISHED"]
    order = list(dict.fromkeys(label(s) for s in df["strategies"]))
    if baseline in order:
        order.remove(baseline)
        order.insert(0, baseline)
    labels = finished["strategies"].map(label)
    base_rows = finished[labels == baseline]
    base_values = {m: per_seed(base_rows, m) for m in metrics} if len(base_rows) else None
    records: dict[str, dict[tuple[str, str], Any]] = {}
    for strategy in order:
        rows = finished[labels == strategy]
        rec: dict[tuple[str, str], Any] = {}
        for m in metrics:
            base = None if base_values is None or strategy == baseline else base_values[m]
            rec.update({(m, f): v for f, v in _cell_stats(per_seed(rows, m), base, alpha).items()})
        records[strategy] = rec
    comparisons, tests, level = _correct(records, list(metrics), baseline, alpha, correction)
    columns = pd.MultiIndex.from_product([metrics, FIELDS], names=["metric", "field"])
    table = pd.DataFrame([[records[s][c] for c in columns] for s in order], index=order, columns=columns,
                         dtype=object)  # Python values: ints stay ints, missing stays None
    table.index.name = "strategy"
    seeds_of = {s: finished[labels == s]["seed"].dropna().nunique() + int(finished[labels == s]["seed"].isna().sum())
                for s in order}
    dup = finished.dropna(subset=["seed"]).assign(label=labels).groupby(["label", "seed"]).size()
    not_finished = [{"trial": _text(r.trial_id), "strategy": label(r.strategies), "status": r.status,
                     "seed": None if _missing(r.seed) else int(r.seed), "reason": _text(r.reason), "run_id": r.run_id}
                    for r in df[df["status"] != "FINISHED"].itertuples()]
    table.attrs.update(baseline=baseline, alpha=alpha, correction=correction, comparisons=comparisons, tests=tests,
                       family_alpha=level, metrics=list(metrics), seeds=seeds_of,
                       not_finished=not_finished, statuses=df["status"].value_counts().to_dict(),
                       averaged=sorted({s for (s, _), n in dup.items() if n > 1}))
    return table


# -- Markdown ---------------------------------------------------------------------
def md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def fmt_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric


def mean_cell(c: dict[str, Any], seeds: int, best: bool) -> str:
    if c["mean"] is None:
        return "n/a (no finished run)"
    mean = f"**{c['mean']:.3f}**" if best else f"{c['mean']:.3f}"
    text = f"{mean} ± {c['half_width']:.3f}" if c["half_width"] is not None else f"{mean} ± {NO_CI}"
    return text + (f" (n={c['n']})" if c["n"] != seeds else "")


def _delta_cell(c: dict[str, Any], is_baseline: bool, has_baseline: bool, correction: str = "holm") -> str:
    if is_baseline:
        return "baseline"
    if not has_baseline or c["mean"] is None:
        return "n/a"
    if c["delta"] is None:
        return "n/a (no shared seed)"
    if not c["tested"]:
        n = c["n_pairs"]
        return (f"{c['delta']:+.3f} ({n} paired seed{'s' if n != 1 else ''}: no test, needs ≥ "
                f"{stats.MIN_PAIRED_SEEDS})")
    adj = "" if correction == "none" else f", adj. {fmt_p(c['p_adj'])}"
    return f"{c['delta']:+.3f} ({fmt_p(c['p_value'])}{adj}, {'significant' if c['significant'] else 'n.s.'})"


def _power_cell(c: dict[str, Any]) -> str:
    """``MDE / seeds needed`` of one Δ cell (see :func:`power_section`)."""
    if c["delta"] is None:
        return "n/a"
    mde = "n/a" if c["mde"] is None else f"{c['mde']:.3f}"
    if c["n_pairs"] < 2:
        need = f"≥ {stats.MIN_PAIRED_SEEDS} (spread unknown)"
    elif c["delta"] == 0:
        need = "n/a (Δ = 0)"
    else:
        need = "> 1000" if c["seeds_needed"] is None else str(c["seeds_needed"])
    return f"{mde} / {need}"


def power_section(table: pd.DataFrame, metrics: list[str] | None = None) -> list[str]:
    """One table for the whole report: per strategy and metric, the minimum detectable difference of
    its paired seeds and the seeds a verdict on its observed Δ would need."""
    a = table.attrs
    metrics = list(metrics or a["metrics"])
    baseline, seeds = a["baseline"], a["seeds"]
    rows = [s for s in table.index if s != baseline and seeds.get(s, 0) > 0]
    if not seeds.get(baseline) or not rows:
        return []
    lines = ["## Seeds and power", "",
             f"Per Δ vs {baseline}: MDE = the smallest true Δ the paired seeds detect with {POWER:.0%} power "
             f"(n/a below {stats.MIN_PAIRED_SEEDS} paired seeds) / the paired seeds a verdict on the observed Δ "
             f"needs at the observed spread (at least {stats.MIN_PAIRED_SEEDS}). Both at the per-test level "
             f"{a['family_alpha']:.2g} (α = {a['alpha']:g}"
             + ("" if a["correction"] == "none" else f" over {a['comparisons']} comparisons, the correction's "
                                                       "strictest step") + "), so they hold after the correction.",
             "", "| " + " | ".join(["strategy", "paired seeds", *(md_cell(m) for m in metrics)]) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for s in rows:
        pairs = max((table.loc[s, (m, "n_pairs")] or 0) for m in metrics)
        lines.append("| " + " | ".join(md_cell(x) for x in [s, str(pairs), *(_power_cell(table.loc[s, m].to_dict())
                                                                          for m in metrics)]) + " |")
    return lines + [""]


def _group_table(table: pd.DataFrame, group: str, metrics: list[str]) -> list[str]:
    a = table.attrs
    baseline, seeds = a["baseline"], a["seeds"]
    has_baseline = baseline in table.index and seeds.get(baseline, 0) > 0
    cells = {m: {s: table.loc[s, m].to_dict() for s in table.index} for m in metrics}
    best: dict[str, set[str]] = {}
    for m in metrics:
        means = {s: c["mean"] for s, c in cells[m].items() if c["mean"] is not None}
        top = (max if higher_is_better(m) else min)(means.values(), default=0.0)
        tied = {s for s, v in means.items() if math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-12)}
        if len(tied) < len(means):  # all equal: nothing is best
            best[m] = tied
    head = ["strategy", "seeds"]
    for m in metrics:
        short = m.split("/", 1)[-1]
        head += [short, f"Δ {short} vs {baseline}"]
    lines = [f"## {group or 'metrics'}", ""]
    if group in SPLIT_NOTES:  # which split the table's numbers come from (issue 15)
        lines += [SPLIT_NOTES[group], ""]
    lines += ["| " + " | ".join(md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for s in table.index:
        row = [s, str(seeds.get(s, 0))]
        for m in metrics:
            c = cells[m][s]
            row += [mean_cell(c, seeds.get(s, 0), s in best.get(m, set())),
                    _delta_cell(c, s == baseline, has_baseline, a.get("correction", "holm"))]
        lines.append("| " + " | ".join(md_cell(x) for x in row) + " |")
    return lines + [""]


def tests_line(table: pd.DataFrame) -> str:
    """The report header's sentence on the tests: which correction, how many tests, what is untested."""
    a = table.attrs
    untested = a["comparisons"] - a["tests"]
    text = (f"Tests: {a['tests']} paired t-tests vs **{a['baseline']}** (α = {a['alpha']:g}), multiple-comparison "
            f"correction: {stats.correction_name(a['correction'])} over all {a['tests']} tests of this report "
            f"(strategies × metrics × domains); \"significant\" refers to the "
            f"{'adjusted' if a['correction'] != 'none' else 'raw'} p.")
    if untested:
        text += (f" {untested} of {a['comparisons']} differences have fewer than {stats.MIN_PAIRED_SEEDS} paired "
                 f"seeds: shown without a test or verdict.")
    return text


def _steps(values: list[int], unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{unit} {lo}" if lo == hi else f"{unit}s {lo}–{hi} (per run: runs.parquet, column checkpoint_step)"


def checkpoint_line(df: pd.DataFrame) -> str:
    """The report header's sentence on the model behind every figure (:func:`collect.selected_checkpoint`):
    which checkpoint, at which evaluation step, and which runs never evaluated."""
    if "checkpoint" not in df.columns or df.empty:
        return ""
    finished = df[df["status"] == "FINISHED"]
    parts = []
    for kind in (BEST_BY_VAL, FROM_HISTORY):
        rows = finished[finished["checkpoint"] == kind]
        for unit in sorted(set(rows["checkpoint_unit"].dropna())):
            steps = [int(x) for x in rows[rows["checkpoint_unit"] == unit]["checkpoint_step"].dropna()]
            label = "best-by-val checkpoint" if kind == BEST_BY_VAL else \
                "best-by-val checkpoint, read from the val/miou history (no best/ record logged)"
            parts.append(f"{label}, evaluation at {_steps(steps, unit)} ({len(steps)} FINISHED "
                         f"run{'s' if len(steps) != 1 else ''})")
    text = ("Checkpoint: every figure of a run (val, every domain, robustness, test) comes from one model: "
            + ("; ".join(parts) if parts else "none (no FINISHED run evaluated)") + ".")
    never = df[df["checkpoint"] == NEVER_EVALUATED]
    if len(never):
        names = ", ".join(f"{_text(r.trial_id) or r.run_id} ({r.status})" for r in never.itertuples())
        text += f" Never evaluated (no val/miou, no figure): {names}."
    return text


def _failed_section(table: pd.DataFrame) -> list[str]:
    runs = table.attrs["not_finished"]
    lines = ["## Failed or stopped runs", ""]
    if not runs:
        return lines + ["None: every run FINISHED.", ""]
    lines += ["| trial | strategy | seed | status | reason |", "|---|---|---|---|---|"]
    for r in runs:
        reason = r["reason"] or "(no reason recorded)"
        reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "… (full text in runs.parquet)"
        seed = "?" if r["seed"] is None else r["seed"]
        lines.append("| " + " | ".join(md_cell(x) for x in (r["trial"] or r["run_id"], r["strategy"], seed,
                                                         r["status"], reason)) + " |")
    return lines + [""]


def to_markdown(table: pd.DataFrame, metrics: list[str] | None = None, header: bool = True) -> str:
    """The :func:`ablation_table` as Markdown: one table per metric group (``val``, ``fog-3``, ...),
    cells ``0.732 ± 0.010`` (mean ± CI half-width; ``n/a (1 seed)`` without a CI), Δ cells
    ``+0.007 (p=0.09, n.s.)``, the best mean per column in bold, MDE and seeds-needed footnotes,
    strategies with fewer seeds, and every run that did not finish."""
    a = table.attrs
    metrics = list(metrics or a["metrics"])
    baseline, seeds = a["baseline"], a["seeds"]
    conf = f"{1 - a['alpha']:.0%}"
    lines = ([tests_line(table), ""] if header else []) + [
             f"Cells: mean ± half-width of the {conf} Student-t interval over seeds, FINISHED runs only. "
             f"Δ: mean paired difference vs **{baseline}** over the seeds both have, with the raw p and the "
             f"adjusted p (n.s. = not significant, not a win). Bold: the best mean of a column only.", ""]
    if not seeds.get(baseline):
        lines += [f"Baseline '{baseline}' has no FINISHED run: no Δ. Strategies: {', '.join(table.index) or 'none'}.",
                  ""]
    most = max(seeds.values(), default=0)
    fewer = [f"{s} ({n} of {most})" for s, n in seeds.items() if n < most]
    if fewer:
        lines += [f"Fewer seeds than others: {', '.join(fewer)}; their Δ uses only the seeds shared with "
                  f"{baseline}.", ""]
    if a["averaged"]:
        lines += [f"Several FINISHED runs for one seed (averaged per seed): {', '.join(a['averaged'])}.", ""]
    groups: dict[str, list[str]] = {}
    for m in metrics:
        groups.setdefault(m.split("/", 1)[0] if "/" in m else "", []).append(m)
    for group, ms in groups.items():
        lines += _group_table(table, group, ms)
    lines += power_section(table, metrics)
    lines += _failed_section(table)
    return "\n".join(lines)


# -- mmsegmentation's summary: aAcc, mIoU, mAcc and per class IoU / Acc -----------
def _mean_text(values: dict[Any, float], alpha: float) -> str:
    if not values:
        return "n/a"
    ci = stats.mean_ci(list(values.values()), confidence=1.0 - alpha)
    return f"{ci.mean:.3f} ± {ci.half_width:.3f}" if ci.half_width is not None else f"{ci.mean:.3f}"


def accuracy_section(df: pd.DataFrame, alpha: float = 0.05, split: str = "val") -> str:
    """Markdown: per strategy, the summary mmsegmentation prints (aAcc, mIoU, mAcc), then per class IoU and
    Acc, as mean (± CI half-width) over FINISHED seeds; descriptive only (no test, outside the table's
    family). Empty when the runs logged no ``<split>/macc``."""
    prefix = f"{split}/"
    if prefix + keys.MACC not in df.columns:
        return ""
    finished = df[df["status"] == "FINISHED"]
    groups = {label(s): rows for s, rows in finished.groupby("strategies", dropna=False)}
    conf = f"{1 - alpha:.0%}"
    lines = [f"## accuracy ({split}, as mmsegmentation reports it)", "",
             f"Mean ± {conf} CI half-width over FINISHED seeds (a single value with one seed); aAcc = pixel "
             "accuracy, mAcc = mean over classes of TP / ground-truth pixels. Descriptive: not tested.", "",
             "| strategy | seeds | aAcc | mIoU | mAcc |", "|---|---|---|---|---|"]
    for s, rows in groups.items():
        cells = [_mean_text(per_seed(rows, prefix + m), alpha) for m in (keys.AACC, keys.MIOU, keys.MACC)]
        lines.append("| " + " | ".join(md_cell(x) for x in [s, str(rows["seed"].nunique()), *cells]) + " |")
    classes = [c[len(prefix + keys.IOU_PREFIX):] for c in metric_columns(df) if c.startswith(prefix + keys.IOU_PREFIX)]
    if classes and groups:
        head = ["class"] + [f"{h} {s}" for s in groups for h in ("IoU", "Acc")]
        lines += ["", "| " + " | ".join(md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
        for c in classes:
            row = [c]
            for rows in groups.values():
                for key in (keys.IOU_PREFIX, keys.ACC_PREFIX):
                    v = per_seed(rows, f"{prefix}{key}{c}")
                    row.append(f"{np.mean(list(v.values())):.3f}" if v else "n/a")
            lines.append("| " + " | ".join(md_cell(x) for x in row) + " |")
    return "\n".join(lines + [""])


# -- files ------------------------------------------------------------------------
def default_metrics(df: pd.DataFrame) -> list[str]:
    """:data:`DEFAULT_METRICS` and ``<domain>/miou`` of every eval domain, those the runs have."""
    have = metric_columns(df)
    domains = [c for c in have if c.endswith(f"/{keys.MIOU}")
               and not c.startswith(keys.NOT_DOMAIN_PREFIXES)]
    test = [m.replace(keys.VAL_PREFIX, keys.TEST_PREFIX, 1) for m in DEFAULT_METRICS]
    return [m for m in DEFAULT_METRICS + test if m in have] + sorted(domains)


def parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing types become float (int and float) or strings (anything else)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        kinds = {type(v) for v in out[col] if not _missing(v)}
        if kinds <= {int, float} and len(kinds) > 1:
            out[col] = [None if _missing(v) else float(v) for v in out[col]]
        elif len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            out[col] = [None if _missing(v) else str(v) for v in out[col]]
    return out

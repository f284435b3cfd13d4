"""The paragraph a report opens with: per key metric, the best strategy, its corrected Δ and the verdict.

Read from an :func:`hardseg.reports.tables.ablation_table` (its family-corrected tests), so the answer
never claims more than the tables: a Δ on fewer than :data:`hardseg.reports.stats.MIN_PAIRED_SEEDS`
paired seeds gets no verdict, only the seeds a verdict would need; "significant" means the adjusted p
(:func:`hardseg.reports.stats.adjust_p`) is below α.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from hardseg import keys
from hardseg.reports import stats
from hardseg.reports.tables import DEFAULT_METRICS, higher_is_better, fmt_p

SKIP_SHIFT = (keys.VAL_PREFIX, keys.BEST_PREFIX, keys.TRAIN_PREFIX)


def key_metrics(table: pd.DataFrame) -> list[str]:
    """The metrics the answer speaks of: :data:`DEFAULT_METRICS` the table has, else its first metric."""
    metrics = list(table.attrs["metrics"])
    keys = [m for m in DEFAULT_METRICS if m in metrics]
    return keys or metrics[:1]


def shift_metrics(table: pd.DataFrame) -> list[str]:
    """``<domain>/miou`` columns of the table (the evaluation domains)."""
    return [m for m in table.attrs["metrics"] if m.endswith(f"/{keys.MIOU}") and not m.startswith(SKIP_SHIFT)]


def verdict(c: dict[str, Any], metric: str, baseline: str, correction: str) -> str:
    """One Δ cell in words: the Δ with its CI and p-values and the verdict, or the seeds a verdict needs."""
    delta = f"Δ {c['delta']:+.3f} vs {baseline}"
    if not c["tested"]:
        n = c["n_pairs"]
        need = c["seeds_needed"]
        need_text = (f"about {need} paired seeds at this Δ and spread" if need is not None and n >= 2
                     else f"at least {stats.MIN_PAIRED_SEEDS} paired seeds")
        return (f"{delta} over {n} paired seed{'s' if n != 1 else ''}: **no verdict** (a test needs ≥ "
                f"{stats.MIN_PAIRED_SEEDS}; a verdict on this Δ needs {need_text})")
    ci = f", 95 % CI [{c['delta_ci_low']:+.3f}, {c['delta_ci_high']:+.3f}]" if c["delta_ci_low"] is not None else ""
    adj = "" if correction == "none" else f", adjusted {fmt_p(c['p_adj'])}"
    if c["significant"]:
        better = (c["delta"] > 0) == higher_is_better(metric)
        word = "**significantly better**" if better else "**significantly worse**"
    else:
        word = "**not significant**" + ("" if correction == "none" else " after the correction")
        if c["seeds_needed"] is not None and c["delta"] != 0:
            word += f"; about {c['seeds_needed']} paired seeds would detect this Δ"
    return f"{delta}{ci} ({fmt_p(c['p_value'])}{adj}, {c['n_pairs']} paired seeds): {word}"


def best_strategy(table: pd.DataFrame, metric: str) -> str | None:
    """The non-baseline strategy with the best mean on ``metric`` that has a Δ, or None."""
    baseline = table.attrs["baseline"]
    cands = {s: table.loc[s, (metric, "mean")] for s in table.index
             if s != baseline and table.loc[s, (metric, "delta")] is not None}
    if not cands:
        return None
    return (max if higher_is_better(metric) else min)(cands, key=lambda s: cands[s])


def answer_lines(table: pd.DataFrame) -> list[str]:
    """``## Answer``: per key metric the best strategy and its verdict vs the baseline; then under shift."""
    a = table.attrs
    baseline, correction = a["baseline"], a["correction"]
    lines = ["## Answer", ""]
    if not a["seeds"].get(baseline):
        return lines + [f"No FINISHED run of the baseline '{baseline}': no comparison (pass --baseline).", ""]
    for m in key_metrics(table):
        best = best_strategy(table, m)
        if best is None:
            lines.append(f"- **{m}**: no strategy shares a seed with {baseline}.")
            continue
        c = table.loc[best, m].to_dict()
        lead = f"best mean **{best}**" if (c["delta"] > 0) == higher_is_better(m) and c["delta"] != 0 else \
            f"no strategy beats {baseline} on its mean; closest **{best}**"
        lines.append(f"- **{m}**: {lead}, {verdict(c, m, baseline, correction)}.")
    shift = shift_metrics(table)
    if shift:
        cells = [(s, m, table.loc[s, m].to_dict()) for s in table.index if s != baseline for m in shift]
        tested = [(s, m, c) for s, m, c in cells if c["tested"]]
        sig = [(s, m, c) for s, m, c in tested if c["significant"]]
        domains = ", ".join(m.split("/", 1)[0] for m in shift)
        if not tested:
            lines.append(f"- **Under shift** ({domains}): no verdict; the differences have fewer than "
                         f"{stats.MIN_PAIRED_SEEDS} paired seeds.")
        elif not sig:
            lines.append(f"- **Under shift** ({domains}): none of the {len(tested)} strategy × domain differences "
                         f"is significant after the correction.")
        else:
            listed = "; ".join(f"{s} on {m.split('/', 1)[0]} {c['delta']:+.3f} (adjusted {fmt_p(c['p_adj'])})"
                               for s, m, c in sig)
            lines.append(f"- **Under shift** ({domains}): {len(sig)} of {len(tested)} strategy × domain differences "
                         f"{'is' if len(sig) == 1 else 'are'} significant after the correction: {listed}.")
    return lines + [""]

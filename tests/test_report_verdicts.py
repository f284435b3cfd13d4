"""Verdicts a report may print: multiple-comparison corrections, the paired-seed minimum, the answer.

The null simulation draws whole report tables in which every strategy is the baseline (identical
strategies, seed noise only) and counts the tables with at least one "significant" cell.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from hardseg.reports import stats
from hardseg.reports.answer import answer_lines
from hardseg.reports.tables import ablation_table, to_markdown

ALPHA = 0.05


# --- adjust_p ----------------------------------------------------------------------
def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # Holm: sorted 0.005 0.01 0.03 0.04 times 4 3 2 1 = 0.02 0.03 0.06 0.04 -> running max
    np.testing.assert_allclose(stats.adjust_p(p, "holm"), [0.03, 0.06, 0.06, 0.02, np.nan])
    # BH: times 4/1 4/2 4/3 4/4 = 0.02 0.02 0.04 0.04 -> running min from the top
    np.testing.assert_allclose(stats.adjust_p(p, "bh"), [0.02, 0.04, 0.04, 0.02, np.nan])
    np.testing.assert_allclose(stats.adjust_p(p, "none"), p)
    assert stats.adjust_p([0.9, 0.8], "holm").tolist() == [1.0, 1.0]  # capped at 1


def test_bh_matches_scipy_and_batches_are_independent_families():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(50, 12)) ** 3
    np.testing.assert_allclose(stats.adjust_p(p, "bh"), sp.false_discovery_control(p, axis=-1), rtol=1e-12)
    batch = stats.adjust_p(p, "holm")
    for i in (0, 3, 49):
        np.testing.assert_allclose(batch[i], stats.adjust_p(p[i], "holm"))


def test_adjust_p_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown correction 'bonf'"):
        stats.adjust_p([0.1], "bonf")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.adjust_p([1.5], "holm")
    assert stats.family_alpha(0.05, 10, "holm") == pytest.approx(0.005)
    assert stats.family_alpha(0.05, 10, "none") == 0.05


# --- the null simulation ------------------------------------------------------------
def null_tables(n_tables: int, strategies: int, metrics: int, seeds: int, rng) -> np.ndarray:
    """Seed differences (table, strategy × metric, seed) vs a baseline identical to every strategy.

    Each run = the seed's effect (shared by all strategies of the seed: same data order and init)
    + the run's own noise, which is correlated across a run's metrics (one run, many metrics), so
    tests of one table are dependent as in a real report.
    """
    shape = (n_tables, strategies + 1, metrics, seeds)
    common = rng.normal(size=(n_tables, strategies + 1, 1, seeds))
    runs = rng.normal(size=(n_tables, 1, metrics, seeds)) + 0.6 * common + 0.8 * rng.normal(size=shape)
    diffs = runs[:, 1:] - runs[:, :1]
    return diffs.reshape(n_tables, strategies * metrics, seeds)


def false_positive_rate(p: np.ndarray, method: str) -> float:
    """Share of tables with at least one adjusted p below α (the family-wise error rate)."""
    return float((stats.adjust_p(p, method) < ALPHA).any(axis=-1).mean())


def test_null_tables_family_wise_false_positive_rate():
    """3 strategies × 4 metrics × 3 domains (36 tests) over 3 paired seeds, 20,000 tables."""
    start = time.perf_counter()
    rng = np.random.default_rng(1)
    n = 20_000
    p = stats.paired_t_pvalues(null_tables(n, strategies=3, metrics=12, seeds=stats.MIN_PAIRED_SEEDS, rng=rng))
    se = np.sqrt(ALPHA * (1 - ALPHA) / n)
    rates = {m: false_positive_rate(p, m) for m in stats.CORRECTIONS}
    print(f"family-wise false-positive rate over {n} null tables of 36 tests: {rates}")
    assert rates["holm"] <= ALPHA + 3 * se
    assert rates["bh"] <= ALPHA + 3 * se  # all nulls true: the FDR is the FWER
    assert rates["none"] > 4 * ALPHA  # uncorrected, most null tables show a "significant" cell
    # each single test is still exact at α
    assert abs(float((p < ALPHA).mean()) - ALPHA) < 0.005
    assert time.perf_counter() - start < 10


# --- tables: the paired-seed minimum and the answer ---------------------------------
def frame(values: dict[str, dict[int, float]], metric: str = "val/miou") -> pd.DataFrame:
    rows = [{"run_id": f"{s}{k}", "trial_id": f"{s}{k}", "strategies": s, "seed": k, "status": "FINISHED",
             "reason": None, "epochs": 2, metric: v} for s, per in values.items() for k, v in per.items()]
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def test_two_seeds_never_significant_even_with_identical_differences():
    """The demo's old failure: two nearly identical seed differences gave p = 0.007, "significant"."""
    df = frame({"ce": {0: 0.726, 1: 0.700}, "ohem": {0: 0.720, 1: 0.6941}})
    assert stats.paired_test([0.720, 0.6941], [0.726, 0.700]).p_value < ALPHA  # the raw test would claim it
    table = ablation_table(df, ["val/miou"])
    cell = table.loc["ohem", "val/miou"].to_dict()
    assert not cell["tested"] and not cell["significant"] and cell["p_adj"] is None
    assert cell["seeds_needed"] >= stats.MIN_PAIRED_SEEDS and cell["mde"] is None
    md = to_markdown(table)
    assert "significant" not in md.replace('"significant"', "").replace("not significant", "")
    assert "-0.006 (2 paired seeds: no test, needs ≥ 3)" in md
    answer = "\n".join(answer_lines(table))
    assert "**no verdict**" in answer and "significant" not in answer
    assert f"about {cell['seeds_needed']} paired seeds" in answer


def test_correction_changes_the_verdict_and_the_answer_says_so():
    rng = np.random.default_rng(3)
    base = {k: 0.70 + 0.01 * rng.normal() for k in range(4)}
    strategies = {"ce": base, "hl": {k: v + 0.011 + 0.004 * rng.normal() for k, v in base.items()}}
    strategies |= {f"s{i}": {k: v + 0.002 * rng.normal() for k, v in base.items()} for i in range(8)}
    df = frame(strategies)
    raw = ablation_table(df, ["val/miou"], correction="none")
    holm = ablation_table(df, ["val/miou"], correction="holm")
    p = [raw.loc[s, ("val/miou", "p_value")] for s in raw.index if s != "ce"]
    assert holm.attrs["tests"] == 9 and holm.loc["hl", ("val/miou", "p_adj")] == pytest.approx(
        stats.adjust_p(p, "holm")[0])
    assert holm.loc["hl", ("val/miou", "p_adj")] >= raw.loc["hl", ("val/miou", "p_value")]
    answer = "\n".join(answer_lines(holm))
    assert answer.startswith("## Answer") and "best mean **hl**" in answer and "adjusted p" in answer
    verdict = "significantly better" if holm.loc["hl", ("val/miou", "significant")] else "not significant"
    assert verdict in answer


def test_answer_when_the_baseline_is_best_and_under_shift():
    df = frame({"ce": {0: 0.7, 1: 0.71, 2: 0.72}, "hl": {0: 0.69, 1: 0.705, 2: 0.70}})
    df["fog-3/miou"] = df["val/miou"] - 0.3
    table = ablation_table(df, ["val/miou", "fog-3/miou"])
    answer = "\n".join(answer_lines(table))
    assert "no strategy beats ce on its mean; closest **hl**" in answer
    assert "**Under shift** (fog-3)" in answer

"""Is tonight worse than last night? The nightly regression rule, on plain numbers.

For every *cell* (strategy × model × dataset) and watched metric, the nightly has
one value per seed on each night. The drop is the change of the seed mean in the
bad direction (``prev - cur`` for a ``max`` metric, ``cur - prev`` for ``min``).
It is a regression when

    drop > t_{1-α', df} · SE

where SE is the standard error of the difference of the two seed means, from the
seed spread of *both* nights, never a fixed constant:

* **Same seeds on both nights** (n ≥ 2): the paired version. d_s = prev_s - cur_s,
  SE = s_d/√n, df = n - 1 (:func:`~hardseg.reports.stats.paired_test` gives s_d).
* **Different seeds** (a trial failed, the suite changed): pooled two-sample,
  s_p² = ((n₁-1)s₁² + (n₂-1)s₂²)/(n₁+n₂-2), SE = s_p·√(1/n₁ + 1/n₂), df = n₁+n₂-2
  (s₁, s₂ from :func:`~hardseg.reports.stats.mean_ci`).

Both are written with v, the variance of the difference of *one* seed pair
(paired: s_d²; pooled: 2·s_p²), as SE = √(v/2 · (1/n₁ + 1/n₂)).

**Floor.** Two or three seeds give a very noisy spread, and a cell whose seeds
happen to agree (or an identical rerun, v = 0) would make any wiggle significant.
So v is floored by the *median v of the same metric over all cells* of the
comparison: a cell is never judged more precisely than the suite's typical cell.
The median (not the mean) keeps one wrecked cell from hiding the others. When
every cell reruns identically (deterministic training, unchanged code), the floor
is 0 and the drops are 0: nothing is flagged; a drop that is not 0 then is a real,
reproducible change (drops below 1e-9 of the metric's scale count as float noise).

**Many comparisons.** A nightly compares k cells × metrics at once. Their one-sided
p-values are one family, adjusted with the reports' correction
(:func:`hardseg.reports.stats.adjust_p`): Holm by default, so an unchanged nightly
raises a false alarm with probability ≤ α, not k·α, and a key is a regression when
its adjusted p is below α. Holm's smallest p faces α/k (Bonferroni's level), the
next α/(k-1), and so on; ``level`` is the step a key's p faced and ``threshold``
the drop that level asks for (``t_{1-level, df} · SE``). The test is one-sided:
only drops count. ``bonferroni`` (the old name of the default) reads as ``holm``,
which rejects everything Bonferroni does and more.

A metric the previous night had and tonight lacks (its trials failed) is a
regression too (``missing``); a new cell or metric has nothing to compare with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from statistics import median
from typing import Literal

import numpy as np
from scipy import stats as sps

from hardseg.reports.stats import CORRECTIONS, adjust_p, mean_ci, paired_test

TIE = 1e-9  # relative: smaller drops are float noise (summation order), not a change
Status = Literal["ok", "regression", "missing", "new", "no estimate"]


@dataclass(frozen=True)
class Key:
    """One compared quantity: a cell (strategy × model × dataset) and a metric."""

    strategy: str
    model: str
    dataset: str
    metric: str

    @property
    def cell(self) -> str:
        return f"{self.strategy} × {self.model} × {self.dataset}"


@dataclass(frozen=True)
class Comparison:
    """The verdict for one key; None fields are undefined (no previous values, no spread)."""

    key: Key
    mode: str
    status: Status
    prev_mean: float | None
    cur_mean: float | None
    n_prev: int
    n_cur: int
    drop: float | None  # > 0: worse tonight
    paired: bool
    se: float | None
    se_cell: float | None  # the cell's own SE, before the floor
    df: int | None
    t_crit: float | None
    threshold: float | None
    p_value: float | None  # one-sided, of drop > 0
    p_adj: float | None = None  # p_value adjusted over the nightly's family (the correction)
    level: float | None = None  # the per-test level this key's p faced (Holm: its step; none: α)
    correction: str = "holm"

    @property
    def flagged(self) -> bool:
        return self.status in ("regression", "missing")

    def to_dict(self) -> dict:
        return asdict(self) | {"cell": self.key.cell, "flagged": self.flagged}


@dataclass(frozen=True)
class _Spread:
    """The variance of one seed pair's difference (v) and its degrees of freedom."""

    v: float
    df: int
    paired: bool


def pair_spread(prev: Mapping[int, float], cur: Mapping[int, float]) -> _Spread | None:
    """v and df of one key from both nights' seed values (see the module docstring); None without spread."""
    if set(prev) == set(cur) and len(prev) >= 2:
        seeds = sorted(prev)
        test = paired_test([prev[s] for s in seeds], [cur[s] for s in seeds])
        return _Spread(test.sd_diff ** 2, len(seeds) - 1, True)
    df = len(prev) + len(cur) - 2
    if not prev or not cur or df < 1:
        return None
    ss = sum((len(x) - 1) * mean_ci(list(x.values())).std ** 2 for x in (prev, cur) if len(x) > 1)
    return _Spread(2.0 * ss / df, df, False)


def correction_of(correction: str) -> str:
    """The correction's name in :data:`~hardseg.reports.stats.CORRECTIONS` (``bonferroni`` reads as ``holm``)."""
    method = "holm" if correction == "bonferroni" else correction
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}: use one of {', '.join(CORRECTIONS)}")
    return method


def _levels(p: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """The per-test level each p faces: Holm α/(m - rank + 1), BH α·rank/m, none α (rank by ascending p)."""
    m = len(p)
    rank = np.empty(m, dtype=int)
    rank[np.argsort(p, kind="stable")] = np.arange(1, m + 1)
    if method == "holm":
        return alpha / (m - rank + 1)
    if method == "bh":
        return alpha * rank / m
    return np.full(m, alpha)


def compare_nights(prev: Mapping[Key, Mapping[int, float]], cur: Mapping[Key, Mapping[int, float]],
                   modes: Mapping[str, str], alpha: float = 0.05, correction: str = "holm") -> list[Comparison]:
    """Compare every key of ``cur`` and ``prev`` ({key: {seed: value}}); ``modes``: metric → max|min.

    ``correction``: ``holm`` (default), ``bh`` or ``none`` (:func:`hardseg.reports.stats.adjust_p`) over the
    one-sided p-values of every judged key.
    """
    method = correction_of(correction)
    spreads = {k: pair_spread(prev[k], cur[k]) for k in cur if prev.get(k) and cur[k]}
    floors: dict[str, float] = {}
    for metric in {k.metric for k in spreads}:
        vs = [s.v for k, s in spreads.items() if s is not None and k.metric == metric]
        if vs:
            floors[metric] = median(vs)
    floor_df = min((s.df for s in spreads.values() if s is not None), default=None)
    raw = {}
    for key in sorted(set(prev) | set(cur), key=lambda k: (k.model, k.dataset, k.strategy, k.metric)):
        p, c = prev.get(key) or {}, cur.get(key) or {}
        raw[key] = _judge(key, modes[key.metric], p, c, spreads.get(key), floors, floor_df)
    judged = [k for k, c in raw.items() if c.p_value is not None]
    pvals = np.array([raw[k].p_value for k in judged], dtype=float)
    adjusted = adjust_p(pvals, method) if judged else pvals
    levels = _levels(pvals, alpha, method) if judged else pvals
    for key, p_adj, level in zip(judged, adjusted, levels):
        raw[key] = _decide(raw[key], float(p_adj), float(level), alpha)
    return [replace(c, correction=method) for c in raw.values()]


def _decide(c: Comparison, p_adj: float, level: float, alpha: float) -> Comparison:
    """The verdict of a judged key from its adjusted p; the threshold at the level its p faced."""
    t_crit = float(sps.t.ppf(1.0 - level, c.df))
    tied = abs(c.drop) <= TIE * max(1.0, abs(c.prev_mean))
    bad = not tied and p_adj < alpha
    return replace(c, status="regression" if bad else "ok", p_adj=p_adj, level=level, t_crit=t_crit,
                   threshold=t_crit * c.se)


def _judge(key: Key, mode: str, prev: Mapping[int, float], cur: Mapping[int, float], spread: _Spread | None,
           floors: Mapping[str, float], floor_df: int | None) -> Comparison:
    """A key's drop, SE and raw one-sided p (status ``ok`` until :func:`_decide` adjusts the family)."""
    pm = mean_ci(list(prev.values())).mean if prev else None
    cm = mean_ci(list(cur.values())).mean if cur else None
    base = dict(key=key, mode=mode, prev_mean=pm, cur_mean=cm, n_prev=len(prev), n_cur=len(cur))
    empty = dict(drop=None, paired=False, se=None, se_cell=None, df=None, t_crit=None, threshold=None, p_value=None)
    if not prev:
        return Comparison(status="new", **base, **empty)
    if not cur:
        return Comparison(status="missing", **base, **empty)
    drop = (pm - cm) if mode == "max" else (cm - pm)
    floor = floors.get(key.metric)
    df = spread.df if spread is not None else floor_df
    if floor is None or df is None:
        return Comparison(status="no estimate", **base, **(empty | {"drop": drop}))
    scale = math.sqrt(0.5 * (1.0 / len(prev) + 1.0 / len(cur)))
    se_cell = math.sqrt(spread.v) * scale if spread is not None else None
    se = math.sqrt(max(spread.v if spread is not None else 0.0, floor)) * scale
    tied = abs(drop) <= TIE * max(1.0, abs(pm))
    if se > 0 and not tied:
        p_value = float(sps.t.sf(drop / se, df))
    else:
        p_value = 1.0 if tied or drop < 0 else 0.0
    return Comparison(key=key, mode=mode, status="ok", prev_mean=pm, cur_mean=cm,
                      n_prev=len(prev), n_cur=len(cur), drop=drop, paired=spread is not None and spread.paired,
                      se=se, se_cell=se_cell, df=df, t_crit=None, threshold=None, p_value=p_value)

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

**Many comparisons.** A nightly compares k cells × metrics at once; with
``correction: bonferroni`` (the default) α' = α/k, so an unchanged nightly raises
a false alarm with probability ≤ α, not k·α. The test is one-sided: only drops
count.

A metric the previous night had and tonight lacks (its trials failed) is a
regression too (``missing``); a new cell or metric has nothing to compare with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from statistics import median
from typing import Literal

from scipy import stats as sps

from hardseg.reports.stats import mean_ci, paired_test

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


def compare_nights(prev: Mapping[Key, Mapping[int, float]], cur: Mapping[Key, Mapping[int, float]],
                   modes: Mapping[str, str], alpha: float = 0.05, correction: str = "bonferroni") -> list[Comparison]:
    """Compare every key of ``cur`` and ``prev`` ({key: {seed: value}}); ``modes``: metric → max|min."""
    spreads = {k: pair_spread(prev[k], cur[k]) for k in cur if prev.get(k) and cur[k]}
    floors: dict[str, float] = {}
    for metric in {k.metric for k in spreads}:
        vs = [s.v for k, s in spreads.items() if s is not None and k.metric == metric]
        if vs:
            floors[metric] = median(vs)
    judged = [k for k in spreads if spreads[k] is not None or k.metric in floors]
    a = alpha / len(judged) if correction == "bonferroni" and judged else alpha
    out = []
    for key in sorted(set(prev) | set(cur), key=lambda k: (k.model, k.dataset, k.strategy, k.metric)):
        p, c = prev.get(key) or {}, cur.get(key) or {}
        out.append(_judge(key, modes[key.metric], p, c, spreads.get(key), floors, a,
                          min((s.df for s in spreads.values() if s is not None), default=None)))
    return out


def _judge(key: Key, mode: str, prev: Mapping[int, float], cur: Mapping[int, float], spread: _Spread | None,
           floors: Mapping[str, float], alpha: float, floor_df: int | None) -> Comparison:
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
    t_crit = float(sps.t.ppf(1.0 - alpha, df))
    threshold = t_crit * se
    tied = abs(drop) <= TIE * max(1.0, abs(pm))
    if se > 0:
        p_value = float(sps.t.sf(drop / se, df))
    else:
        p_value = 1.0 if tied or drop < 0 else 0.0
    bad = not tied and drop > threshold
    return Comparison(key=key, mode=mode, status="regression" if bad else "ok", prev_mean=pm, cur_mean=cm,
                      n_prev=len(prev), n_cur=len(cur), drop=drop, paired=spread is not None and spread.paired,
                      se=se, se_cell=se_cell, df=df, t_crit=t_crit, threshold=threshold, p_value=p_value)

"""Statistics over seeds for comparing hard-pixel strategies honestly.

At small CPU budgets the seed-to-seed noise of a metric (mIoU, boundary F1, ...)
is as large as the effect of switching strategy (ce, hl, ohem, focal, ...), so a
single-seed Δ means nothing: a Δ within noise is never a win. These helpers put a
confidence interval on every mean, test strategy pairs with a paired t-test over
shared seeds, and say how large a difference the seeds at hand could detect, or
how many seeds a given difference would need.

Standard formulas (e.g. Montgomery, *Design and Analysis of Experiments*; Cohen,
*Statistical Power Analysis*, ch. 2; G*Power's "matched pairs" t-test):

* CI of a mean: x̄ ± t_{(1+c)/2, n-1} · s/√n, s the sample sd (ddof=1).
* Paired t-test: d_i = a_i - b_i, t = d̄ / (s_d/√n), df = n-1, two-sided p.
* Power of that test for a true mean difference δ: with t* = t_{1-α/2, n-1} and
  noncentrality λ = δ·√n/σ_d, power = P(T' > t*) + P(T' < -t*), T' ~ nct(n-1, λ).
* Relative robustness (as in ImageNet-C/Cityscapes-C): mean_s shifted_s / clean
  (:func:`hardseg.robustness.relative_robustness`, re-exported here).
* Multiple comparisons (a report runs one test per strategy × metric × domain):
  Holm's step-down adjustment (Holm 1979, *Scand. J. Statist.* 6:65-70; controls the
  family-wise error rate under any dependence) and Benjamini-Hochberg's step-up
  adjustment (Benjamini & Hochberg 1995, *JRSS B* 57:289-300; controls the false
  discovery rate), the values ``statsmodels.stats.multitest.multipletests`` gives.
* A verdict needs :data:`MIN_PAIRED_SEEDS` paired seeds (see there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hardseg.robustness import relative_robustness  # noqa: F401  (one formula, shared with training)

MIN_PAIRED_SEEDS = 3
"""Fewest paired seeds on which a report runs a test and may call a difference significant.

With 2 seeds the paired t-test has one degree of freedom: its spread estimate rests on a
single difference of differences, so two nearly identical seed differences make any Δ,
however small, "significant". Below this many pairs a report shows the mean Δ and the
seeds a test would need, never a verdict (README, "hardseg report")."""

CORRECTIONS = ("holm", "bh", "none")
"""Multiple-comparison adjustments of :func:`adjust_p`: Holm (the default), Benjamini-Hochberg, none."""


@dataclass(frozen=True)
class MeanCI:
    """Mean with a Student-t interval; ``low``/``high``/``half_width``/``std`` are None for n == 1."""

    mean: float
    low: float | None
    high: float | None
    half_width: float | None
    n: int
    std: float | None


@dataclass(frozen=True)
class PairedTest:
    """Two-sided paired t-test of a - b over shared seeds; None fields are undefined for n < 2."""

    delta_mean: float
    delta_ci_low: float | None
    delta_ci_high: float | None
    t: float | None
    p_value: float | None
    n: int
    sd_diff: float | None
    significant: bool
    alpha: float = 0.05


def _finite_array(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one value (one per seed)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr.tolist()} (a run diverged or a metric is missing)")
    return arr


def _check_prob(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean ± t_{(1+c)/2, n-1} · s/√n, with s the sample standard deviation (ddof=1).

    With one value there is no interval: ``low``, ``high``, ``half_width`` and ``std``
    are None (never NaN, never 0). Empty input or NaN/inf values raise ValueError.
    """
    _check_prob(confidence, "confidence")
    x = _finite_array(values, "values")
    n, mean = int(x.size), float(x.mean())
    if n == 1:
        return MeanCI(mean, None, None, None, 1, None)
    s = float(x.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * s / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, half, n, s)


def paired_test(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> PairedTest:
    """Two-sided paired t-test on d = a - b (a[i], b[i] share seed i), as ``scipy.stats.ttest_rel``.

    t = d̄ / (s_d/√n), df = n-1, p = 2·P(T_{n-1} > |t|); the CI of d̄ is the
    (1-α) Student-t interval of :func:`mean_ci`; ``significant`` is p < α.
    Edge cases: n == 1 → t, p, CI and sd None, not significant. s_d == 0 (all
    differences identical): if they are all 0, t = 0 and p = 1.0; otherwise the
    difference is exact and consistent across seeds, so t = ±inf, p = 0.0,
    significant (the CI collapses to d̄). Different lengths raise ValueError.
    """
    _check_prob(alpha, "alpha")
    xa, xb = _finite_array(a, "a"), _finite_array(b, "b")
    if xa.size != xb.size:
        raise ValueError(f"paired test needs one value per seed on both sides, got {xa.size} and {xb.size}")
    d = xa - xb
    n, dm = int(d.size), float(d.mean())
    if n < 2:
        return PairedTest(dm, None, None, None, None, n, None, False, alpha)
    ci = mean_ci(d, confidence=1.0 - alpha)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        t, p = (0.0, 1.0) if dm == 0.0 else (math.copysign(math.inf, dm), 0.0)
    else:
        t = dm / (sd / math.sqrt(n))
        p = float(2.0 * stats.t.sf(abs(t), n - 1))
    return PairedTest(dm, ci.low, ci.high, t, p, n, sd, p < alpha, alpha)


def paired_power(delta: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with n pairs against a true mean difference delta.

    power = P(T' > t*) + P(T' < -t*), t* = t_{1-α/2, n-1}, T' ~ noncentral t with
    df = n-1 and noncentrality λ = δ·√n/σ_d (exact; no normal approximation). At
    δ = 0 this is α. With σ_d == 0 the test of :func:`paired_test` always rejects a
    non-zero δ (power 1.0) and never rejects δ = 0 (power 0.0). n < 2 raises ValueError.
    """
    _check_prob(alpha, "alpha")
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got n={n}")
    if not (math.isfinite(delta) and math.isfinite(sd_diff)) or sd_diff < 0:
        raise ValueError(f"need finite delta and sd_diff >= 0, got delta={delta}, sd_diff={sd_diff}")
    if sd_diff == 0.0:
        return 1.0 if delta != 0.0 else 0.0
    df, nc = n - 1, abs(delta) * math.sqrt(n) / sd_diff
    t_crit = stats.t.ppf(1.0 - alpha / 2.0, df)
    if nc > 1e3 * t_crit:  # differences equal but for rounding: scipy's nct is NaN there; with
        return 1.0  # T' = (Z + λ)/√(χ²_df/df), P(T' < t*) <= P(√(χ²_df/df) > 1e3 - |Z|/t*) = 0 in doubles
    # Lower tail as P(T'(-λ) > t*): scipy's nct.cdf far in the tail can return NaN.
    power = float(stats.nct.sf(t_crit, df, nc) + stats.nct.sf(t_crit, df, -nc))
    if not math.isfinite(power):
        raise ArithmeticError(f"noncentral t power is not finite for df={df}, noncentrality={nc}")
    return min(power, 1.0)


def min_detectable_difference(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true mean difference δ > 0 with paired_power(δ, sd_diff, n, alpha) >= power.

    Solved exactly on the noncentral t (see :func:`paired_power`) by bisection to a
    relative precision of 1e-12, returning the upper end so the power is never below
    target. Compare: the normal approximation δ ≈ (z_{1-α/2} + z_power)·σ_d/√n is too
    optimistic for few seeds. n < 2 → None (no test exists). sd_diff == 0 → 0.0:
    with no spread any non-zero difference is detected, so the infimum is 0.
    """
    _check_prob(power, "power")
    _check_prob(alpha, "alpha")
    if power <= alpha:
        raise ValueError(f"power must exceed alpha (the power at δ = 0), got power={power}, alpha={alpha}")
    if n < 2:
        return None
    if not math.isfinite(sd_diff) or sd_diff < 0:
        raise ValueError(f"sd_diff must be finite and >= 0, got {sd_diff}")
    if sd_diff == 0.0:
        return 0.0
    lo, hi = 0.0, sd_diff * 4.0 / math.sqrt(n)
    while paired_power(hi, sd_diff, n, alpha) < power:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if paired_power(mid, sd_diff, n, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def seeds_needed(
    delta: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 1000
) -> int | None:
    """Smallest n >= 2 with paired_power(delta, sd_diff, n, alpha) >= power (pairs = seeds per strategy).

    None when delta == 0 (nothing to detect) or when max_n seeds are not enough.
    sd_diff == 0 and delta != 0 → 2 (the smallest n a t-test admits).
    """
    _check_prob(power, "power")
    if delta == 0.0:
        return None
    for n in range(2, max_n + 1):
        if paired_power(delta, sd_diff, n, alpha) >= power:
            return n
    return None


def _check_correction(method: str) -> None:
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}: use one of {', '.join(CORRECTIONS)}")


def adjust_p(p_values: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family of tests, along the last axis (a batch of families works too).

    * ``holm``: sort p ascending, p̃_(i) = max_{j ≤ i} min(1, (m - j + 1) · p_(j)); rejecting
      p̃ < α keeps the family-wise error rate ≤ α under any dependence between the tests.
    * ``bh``: p̃_(i) = min_{j ≥ i} min(1, m / j · p_(j)); rejecting p̃ < α keeps the false
      discovery rate ≤ α (independent or positively dependent tests).
    * ``none``: p unchanged.

    NaN entries are not tests: they stay NaN and do not count in m. Values outside [0, 1] or an
    unknown method raise ValueError.
    """
    _check_correction(method)
    p = np.array(p_values, dtype=float, ndmin=1)
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite].tolist()}")
    if method == "none" or p.size == 0:
        return p
    m = finite.sum(axis=-1, keepdims=True)  # tests per family
    order = np.argsort(np.where(finite, p, np.inf), axis=-1, kind="stable")  # NaN last
    ps = np.take_along_axis(np.where(finite, p, 1.0), order, axis=-1)
    rank = np.arange(1, p.shape[-1] + 1)  # 1-based rank among the sorted values
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - rank + 1) * ps), axis=-1)
    else:  # bh
        raw = np.minimum(1.0, m / rank * ps)
        adj = np.minimum.accumulate(raw[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj, axis=-1)
    out[~finite] = np.nan
    return out


def correction_name(method: str) -> str:
    """How a report names a correction."""
    _check_correction(method)
    return {"holm": "Holm-Bonferroni (family-wise error rate)", "bh": "Benjamini-Hochberg (false discovery rate)",
            "none": "none (each test at its own α)"}[method]


def family_alpha(alpha: float, m: int, method: str) -> float:
    """The per-test level a difference must reach in a family of m comparisons, at worst: α/m under Holm
    and BH (their strictest step, Bonferroni's level), α without a correction. Reports compute the
    minimum detectable difference and the seeds a verdict needs at this level, so they hold under
    the correction."""
    _check_correction(method)
    return alpha if method == "none" or m <= 1 else alpha / m


def paired_t_pvalues(diffs: np.ndarray) -> np.ndarray:
    """Two-sided paired t-test p-values of ``diffs[..., n]`` (seed differences on the last axis),
    vectorised; the statistic of :func:`paired_test`, for simulations over many tables."""
    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got n={n}")
    t = d.mean(axis=-1) / (d.std(axis=-1, ddof=1) / math.sqrt(n))
    return 2.0 * stats.t.sf(np.abs(t), n - 1)

"""``hardseg plan``: how many paired seeds, and how many GPU-hours, a verdict needs.

A report tests every Δ (strategy − baseline, per metric) with a paired t-test and corrects
the family of all its tests (:mod:`hardseg.reports.tables`, Holm by default). So the seeds an
ablation needs depend on the effect to detect (Δ), the seed spread of a paired difference
(σ_d), the power wanted (0.8) and the size of the family the planned ablation's report will
have (m = strategies × metrics): with Holm the first test faces α/m, and the plan sizes every
comparison for that level (:func:`hardseg.reports.stats.family_alpha`), so each Δ is detected
with the planned power even when every other comparison of the family is null.

The spread comes from a *pilot* (an ablation, or a study's first stage, the ``defaults``
ablation): σ_d of each strategy's paired differences against the baseline over the seeds
both ran (at least 2 per cell). Or it is given: ``sigma_run``, one run's seed-to-seed sd (as
repeats of one config show), gives σ_d = √2 · σ_run for two independently seeded runs; a
paired design on shared seeds can only lower it, which a pilot measures.

The cost of the plan: seeds × cells (the baseline and each strategy) runs of ``iterations``
iterations at ``seconds_per_iter`` (wall time of one iteration on ``gpus`` GPUs; a pilot's
median ``train/step_time_s``) = GPU-hours.

:func:`simulated_power` checks a planned n by simulation: paired tables with one true Δ in a
family of m − 1 null comparisons, Holm-adjusted as the report does, detected when the Δ's
adjusted p < α with the right sign.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.errors import HardsegError
from hardseg.reports import stats
from hardseg.reports.collect import ReportError, find_parent, runs_frame
from hardseg.reports.tables import label, md_cell, per_seed

POWER = 0.8
MIN_PILOT_SEEDS = 2  # the fewest seeds per cell with a spread
STEP_TIME = f"{keys.TRAIN_PREFIX}step_time_s"  # the loop's median wall time of one iteration, per epoch
FIRST_STAGE = "defaults"  # a study's first stage (hardseg.platform.study.STAGES)
ARTIFACT_DIR = "plan"


class PlanError(HardsegError, ValueError):
    """A plan's input cannot give a plan (Δ ≤ 0, no spread, too few pilot seeds); the message says what to fix."""


@dataclass(frozen=True)
class Comparison:
    """One planned Δ: ``strategy`` − baseline on ``metric``, at the spread ``sd_diff``."""

    strategy: str
    metric: str
    sd_diff: float
    delta: float  # the effect to detect
    pilot_pairs: int | None = None  # seeds the pilot had for this Δ (None: σ given)
    pilot_delta: float | None = None  # the Δ the pilot observed
    seeds: int | None = None  # paired seeds per cell for the planned power (None: more than MAX_SEEDS)
    power: float | None = None  # the power at ``seeds``


@dataclass
class Plan:
    """Seeds per comparison and the plan's cost; :func:`plan_markdown` prints it."""

    comparisons: list[Comparison]
    baseline: str
    strategies: int  # compared with the baseline in the planned ablation
    metrics: int  # tested per strategy in the planned report (domains included)
    alpha: float
    correction: str
    level: float  # the per-test level each Δ is planned for
    power: float
    sigma_source: str
    seeds_per_cell: int | None = None
    iterations: int | None = None
    seconds_per_iter: float | None = None
    seconds_source: str | None = None
    gpus: int = 1
    pilot: str | None = None
    pilot_run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> int:
        return self.strategies * self.metrics

    @property
    def cells(self) -> int:
        return self.strategies + 1

    @property
    def runs(self) -> int | None:
        return None if self.seeds_per_cell is None else self.seeds_per_cell * self.cells

    @property
    def gpu_hours(self) -> float | None:
        if self.runs is None or self.iterations is None or self.seconds_per_iter is None:
            return None
        return self.runs * self.iterations * self.seconds_per_iter * self.gpus / 3600.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"family": self.family, "cells": self.cells, "runs": self.runs,
                               "gpu_hours": self.gpu_hours}


# -- the arithmetic -------------------------------------------------------------------
def check_inputs(delta: float | None, power: float, alpha: float, correction: str, strategies: int | None,
                 metrics: int | None) -> None:
    """Raise :class:`PlanError` naming the option to fix."""
    if delta is not None and not (math.isfinite(delta) and delta > 0):
        raise PlanError(f"--delta must be a positive effect to detect (in the metric's units), got {delta}")
    if not 0 < alpha < 1 or not alpha < power < 1:
        raise PlanError(f"need 0 < --alpha < --power < 1, got alpha={alpha}, power={power}")
    if correction not in stats.CORRECTIONS:
        raise PlanError(f"unknown --correction '{correction}': use one of {', '.join(stats.CORRECTIONS)}")
    for name, value in (("--strategies", strategies), ("--metric-count", metrics)):
        if value is not None and value < 1:
            raise PlanError(f"{name} must be at least 1, got {value}")


def check_budget(iterations: int | None, gpus: int, seconds_per_iter: float | None, simulate: int = 0) -> None:
    """Raise :class:`PlanError` for a cost input that cannot be (≤ 0 iterations, GPUs, seconds; < 0 simulations)."""
    for name, value, least in (("--iterations", iterations, 1), ("--gpus", gpus, 1), ("--simulate", simulate, 0)):
        if value is not None and value < least:
            raise PlanError(f"{name} must be at least {least}, got {value}")
    if seconds_per_iter is not None and not seconds_per_iter > 0:
        raise PlanError(f"--seconds-per-iter must be positive, got {seconds_per_iter}")


def seeds_for(delta: float, sd_diff: float, level: float, power: float = POWER) -> tuple[int | None, float | None]:
    """``(paired seeds, their power)``: the fewest n ≥ :data:`stats.MIN_PAIRED_SEEDS` whose paired t-test at
    the per-test ``level`` detects ``delta`` with ``power`` (None, None beyond 1000 seeds)."""
    n = stats.seeds_needed(delta, sd_diff, alpha=level, power=power)
    if n is None:
        return None, None
    n = max(n, stats.MIN_PAIRED_SEEDS)
    return n, stats.paired_power(delta, sd_diff, n, alpha=level)


def simulated_power(delta: float, sd_diff: float, n: int, family: int, alpha: float = 0.05,
                    correction: str = "holm", sims: int = 20000, seed: int = 0) -> tuple[float, float]:
    """``(detected fraction, its standard error)`` over ``sims`` simulated paired tables: one comparison with
    true Δ = ``delta`` and ``family`` − 1 null ones, each of ``n`` seed differences ~ N(Δ, σ_d²), p-values of
    :func:`stats.paired_t_pvalues` adjusted by ``correction`` per table; detected: adjusted p < α and d̄ > 0."""
    rng = np.random.default_rng(seed)
    means = np.zeros(family)
    means[0] = delta
    diffs = rng.normal(means[None, :, None], sd_diff, size=(sims, family, n))
    p = stats.adjust_p(stats.paired_t_pvalues(diffs), correction)
    hit = (p[:, 0] < alpha) & (diffs[:, 0].mean(axis=-1) > 0)
    frac = float(hit.mean())
    return frac, math.sqrt(frac * (1 - frac) / sims)


# -- a pilot ----------------------------------------------------------------------------
def find_pilot(client: MlflowClient, name: str, experiment: str = "hardseg") -> Run:
    """The parent run of the ablation (or sweep) ``name``, or the first stage of the study ``name``."""
    try:
        return find_parent(client, name, experiment)
    except ReportError as err:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        studies = client.search_runs([exp.experiment_id], max_results=10, order_by=["start_time DESC"],
                                     filter_string=f"tags.`{keys.KIND}` = '{keys.STUDY_KIND}' and "
                                                   f"tags.`{keys.SWEEP}` = '{name}'") if "'" not in name else []
        if not studies:
            raise err
        stages = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
            f"tags.`{keys.STUDY}` = '{studies[0].info.run_id}' and tags.`{keys.STAGE}` = '{FIRST_STAGE}'"))
        stage = stages[0] if stages else None
        if stage is None:
            raise ReportError(f"study '{name}' has no '{FIRST_STAGE}' stage yet; plan from an ablation or "
                              f"give --sigma") from None
        return stage


def pilot_comparisons(df: pd.DataFrame, baseline: str, metrics: list[str], delta: float | None,
                      name: str) -> list[Comparison]:
    """Per strategy (not the baseline) and metric: σ_d of the paired differences over the seeds both have.

    Every cell (strategy) needs :data:`MIN_PILOT_SEEDS` FINISHED seeds shared with the baseline; the
    comparison plans ``delta`` (None: the pilot's own |Δ|)."""
    finished = df[df["status"] == "FINISHED"]
    labels = finished["strategies"].map(label)
    strategies = list(dict.fromkeys(labels))
    if baseline not in strategies:
        raise PlanError(f"pilot '{name}' has no FINISHED run of the baseline '{baseline}' (strategies: "
                        f"{', '.join(strategies) or 'none'}); pass --baseline")
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise PlanError(f"pilot '{name}' logged no {', '.join(missing)}; pass --metrics with logged ones")
    base = {m: per_seed(finished[labels == baseline], m) for m in metrics}
    out: list[Comparison] = []
    short: list[str] = []
    for s in (x for x in strategies if x != baseline):
        for m in metrics:
            values = per_seed(finished[labels == s], m)
            shared = sorted(k for k in values if k in base[m] and isinstance(k, int))
            if len(shared) < MIN_PILOT_SEEDS:
                short.append(f"{s} on {m} ({len(shared)})")
                continue
            d = np.array([values[k] - base[m][k] for k in shared])
            out.append(Comparison(s, m, float(d.std(ddof=1)), delta if delta is not None else abs(float(d.mean())),
                                  pilot_pairs=len(shared), pilot_delta=float(d.mean())))
    if len(finished[labels == baseline]["seed"].dropna().unique()) < MIN_PILOT_SEEDS:
        short.insert(0, f"{baseline} (baseline, {finished[labels == baseline]['seed'].nunique()})")
    if short or not out:
        raise PlanError(f"pilot '{name}' has fewer than {MIN_PILOT_SEEDS} FINISHED seeds per cell shared with "
                        f"'{baseline}': {', '.join(short) or 'no strategy besides the baseline'}; a spread needs "
                        f"at least {MIN_PILOT_SEEDS} (run more seeds, or give --sigma)")
    return out


def pilot_seconds_per_iter(df: pd.DataFrame) -> float | None:
    """The median over FINISHED runs of their last ``train/step_time_s`` (one iteration's wall time)."""
    if STEP_TIME not in df.columns:
        return None
    values = df.loc[df["status"] == "FINISHED", STEP_TIME].dropna()
    return float(values.median()) if len(values) else None


# -- the plan ----------------------------------------------------------------------------
def make_plan(comparisons: list[Comparison], *, baseline: str, strategies: int, metrics: int, alpha: float = 0.05,
              correction: str = "holm", power: float = POWER, sigma_source: str, iterations: int | None = None,
              seconds_per_iter: float | None = None, seconds_source: str | None = None, gpus: int = 1,
              pilot: Run | None = None) -> Plan:
    """Size every comparison at the family's per-test level; the plan runs the largest n on every cell."""
    level = stats.family_alpha(alpha, strategies * metrics, correction)
    sized = []
    for c in comparisons:
        if c.sd_diff == 0:
            sized.append(Comparison(**(asdict(c) | {"seeds": stats.MIN_PAIRED_SEEDS, "power": 1.0})))
            continue
        n, pw = seeds_for(c.delta, c.sd_diff, level, power)
        sized.append(Comparison(**(asdict(c) | {"seeds": n, "power": pw})))
    ns = [c.seeds for c in sized]
    plan = Plan(sized, baseline, strategies, metrics, alpha, correction, level, power, sigma_source,
                seeds_per_cell=None if any(n is None for n in ns) else max(ns), iterations=iterations,
                seconds_per_iter=seconds_per_iter, seconds_source=seconds_source, gpus=gpus,
                pilot=pilot.data.tags.get(keys.SWEEP) if pilot else None,
                pilot_run_id=pilot.info.run_id if pilot else None)
    if any(c.sd_diff == 0 for c in sized):
        plan.notes.append("a comparison with no spread in the pilot (σ_d = 0) is planned at the minimum seeds; "
                          "a larger pilot would measure its spread")
    return plan


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def plan_markdown(plan: Plan, simulation: dict[str, Any] | None = None) -> str:
    """The plan as Markdown: the family and its level, one row per comparison, the cost."""
    corr = stats.correction_name(plan.correction)
    lines = ["# hardseg plan", ""]
    if plan.pilot_run_id:
        lines.append(f"Pilot: `{plan.pilot}` (MLflow run `{plan.pilot_run_id}`).")
    lines += [f"Planned ablation: {plan.strategies} strateg{'ies' if plan.strategies != 1 else 'y'} vs "
              f"**{plan.baseline}** on {plan.metrics} metric{'s' if plan.metrics != 1 else ''}: a family of "
              f"{plan.family} paired t-tests, correction {corr}; each Δ is planned at the per-test level "
              f"{plan.level:.3g} (α = {plan.alpha:g}"
              + ("" if plan.correction == "none" else f" / {plan.family}, the correction's strictest step")
              + f") and power {plan.power:g}. Spread: {plan.sigma_source}.", "",
              "| comparison | pilot seeds | pilot Δ | σ_d | Δ to detect | seeds per cell | power |",
              "|---|---|---|---|---|---|---|"]
    for c in plan.comparisons:
        seeds = "> 1000" if c.seeds is None else str(c.seeds)
        lines.append("| " + " | ".join(md_cell(x) for x in [
            f"{c.strategy} − {plan.baseline}, {c.metric}", "-" if c.pilot_pairs is None else str(c.pilot_pairs),
            "-" if c.pilot_delta is None else f"{c.pilot_delta:+.4g}", _fmt(c.sd_diff), _fmt(c.delta), seeds,
            "n/a" if c.power is None else f"{c.power:.3f}"]) + " |")
    lines.append("")
    if plan.seeds_per_cell is None:
        lines.append("Seeds per cell: more than 1000 for at least one comparison: detect a larger Δ, or lower "
                     "the spread (paired seeds, a longer schedule).")
    else:
        lines.append(f"**Seeds per cell: {plan.seeds_per_cell}** (the largest above: every cell runs the same "
                     f"seeds, so every Δ is paired); {plan.cells} cells × {plan.seeds_per_cell} seeds = "
                     f"{plan.runs} runs.")
    if plan.gpu_hours is not None:
        hours = plan.iterations * plan.seconds_per_iter / 3600.0
        lines.append(f"**Cost: {plan.gpu_hours:,.1f} GPU-hours**: {plan.runs} runs × {plan.iterations:,} iterations "
                     f"× {plan.seconds_per_iter:g} s/iteration ({plan.seconds_source}) × {plan.gpus} "
                     f"GPU{'s' if plan.gpus != 1 else ''} ({hours:,.2f} h of wall time per run).")
    else:
        what = "--iterations" if plan.iterations is None else "--seconds-per-iter (the pilot logged no step time)"
        lines.append(f"Cost: not computed; give {what}.")
    if simulation:
        lines += ["", f"Simulation ({simulation['sims']} paired tables per n, one true Δ among {plan.family} "
                      f"comparisons, {plan.correction}-adjusted, worst comparison above): detected fraction "
                      f"{simulation['at_n']:.3f} ± {simulation['se_n']:.3f} at n = {simulation['n']}, "
                      f"{simulation['at_n_1']:.3f} ± {simulation['se_n_1']:.3f} at n = {simulation['n'] - 1}."]
    lines += [f"Note: {n}." for n in plan.notes]
    return "\n".join(lines) + "\n"


def simulate_plan(plan: Plan, sims: int, seed: int = 0) -> dict[str, Any] | None:
    """:func:`simulated_power` of the plan's hardest comparison at its n and n − 1."""
    sized = [c for c in plan.comparisons if c.seeds is not None and c.sd_diff > 0]
    if not sized:
        return None
    c = max(sized, key=lambda c: (c.seeds, -(c.power or 0)))
    at_n, se_n = simulated_power(c.delta, c.sd_diff, c.seeds, plan.family, plan.alpha, plan.correction, sims, seed)
    at_n_1, se_n_1 = simulated_power(c.delta, c.sd_diff, c.seeds - 1, plan.family, plan.alpha, plan.correction,
                                     sims, seed + 1)
    return {"comparison": f"{c.strategy} − {plan.baseline}, {c.metric}", "n": c.seeds, "sims": sims,
            "at_n": at_n, "se_n": se_n, "at_n_1": at_n_1, "se_n_1": se_n_1}


def plan_from_sigma(delta: float, *, sigma_run: float | None = None, sigma_diff: float | None = None,
                    strategies: int = 1, metrics: int = 1, baseline: str = "ce", **kw: Any) -> Plan:
    """The plan for a given spread: ``sigma_diff`` (σ of a paired difference) or ``sigma_run`` (one run's
    seed sd; σ_d = √2 · σ_run). One comparison stands for all ``strategies`` × ``metrics``."""
    check_inputs(delta, kw.get("power", POWER), kw.get("alpha", 0.05), kw.get("correction", "holm"), strategies,
                 metrics)
    if (sigma_run is None) == (sigma_diff is None):
        raise PlanError("give exactly one of --sigma (one run's seed-to-seed sd) and --sigma-diff (the sd of a "
                        "paired difference), or a pilot NAME")
    sd = sigma_diff if sigma_diff is not None else math.sqrt(2.0) * sigma_run
    if not (math.isfinite(sd) and sd > 0):
        raise PlanError(f"--sigma/--sigma-diff must be positive, got {sigma_run if sigma_diff is None else sd}")
    source = (f"σ_d = {sd:g} given (--sigma-diff)" if sigma_diff is not None else
              f"σ_d = √2 × {sigma_run:g} = {sd:.4g} (--sigma, one run's seed sd; independent seeds)")
    comp = Comparison("each strategy", "each metric", sd, delta)
    return make_plan([comp], baseline=baseline, strategies=strategies, metrics=metrics, sigma_source=source, **kw)


def plan_from_pilot(client: MlflowClient, name: str, *, delta: float | None = None, metrics: list[str] | None = None,
                    strategies: int | None = None, metric_count: int | None = None, baseline: str = "ce",
                    experiment: str = "hardseg", seconds_per_iter: float | None = None, **kw: Any) -> Plan:
    """The plan from a pilot's measured spread (``metrics`` default ``val/miou``); the planned family defaults
    to the pilot's strategies × ``metrics``, the seconds per iteration to the pilot's measured ones."""
    check_inputs(delta, kw.get("power", POWER), kw.get("alpha", 0.05), kw.get("correction", "holm"), strategies,
                 metric_count)
    parent = find_pilot(client, name, experiment)
    df = runs_frame(client, parent)
    metrics = list(metrics or [keys.VAL_MIOU])
    comps = pilot_comparisons(df, baseline, metrics, delta, name)
    measured = pilot_seconds_per_iter(df)
    source = "--seconds-per-iter" if seconds_per_iter is not None else "the pilot's median train/step_time_s"
    return make_plan(comps, baseline=baseline, strategies=strategies or len({c.strategy for c in comps}),
                     metrics=metric_count or len(metrics), pilot=parent,
                     sigma_source="σ_d of each comparison's paired seed differences in the pilot",
                     seconds_per_iter=seconds_per_iter if seconds_per_iter is not None else measured,
                     seconds_source=source, **kw)


def log_plan(client: MlflowClient, plan: Plan, markdown: str, simulation: dict[str, Any] | None = None) -> None:
    """``plan/plan.md`` and ``plan/plan.json`` on the pilot's parent run."""
    if plan.pilot_run_id is None:
        return
    client.log_text(plan.pilot_run_id, markdown, f"{ARTIFACT_DIR}/plan.md")
    client.log_dict(plan.pilot_run_id, plan.to_dict() | {"simulation": simulation}, f"{ARTIFACT_DIR}/plan.json")

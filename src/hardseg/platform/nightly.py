"""``hardseg nightly SUITE``: run a fixed suite, compare it with the previous nightly, flag regressions.

One MLflow parent run per nightly (``hardseg.kind = nightly``, tagged with the
suite, the date and the git commit). Under it, one ablation grid per (model,
dataset) cell of the suite (:func:`hardseg.platform.sweep.run_sweep`, nested with
``mlflow.parentRunId``), each with one child run per strategy × seed. The
previous nightly is the latest earlier FINISHED nightly run of the same suite
name. Every watched metric of every cell is judged by the rule of
:mod:`hardseg.reports.regression`; the summary (Markdown + JSON) goes to an
output folder and onto the parent run (artifacts ``nightly/``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from hardseg import keys
from hardseg.errors import ConfigError
from hardseg.platform import tracking
from hardseg.platform.ablation import ablation_space
from hardseg.platform.cluster import connect_ray
from hardseg.platform.multinode import check_multinode
from hardseg.platform.prepare import PreparedSweep, prepare_sweep
from hardseg.platform.runs import RunCloser, environment_tags, open_run
from hardseg.platform.suite import Suite
from hardseg.platform.sweep import run_sweep
from hardseg.reports.collect import runs_frame
from hardseg.reports.regression import Comparison, Key, compare_nights, correction_of
from hardseg.reports.stats import correction_name
from hardseg.search_spaces import SearchSpace

GRID_KEYS = ("strategies", "seed")


@dataclass
class NightlyOutcome:
    run_id: str
    previous_run_id: str | None
    comparisons: list[Comparison]
    summary_md: Path
    summary_json: Path
    interrupted: bool = False
    cell_runs: dict[str, str] = field(default_factory=dict)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.flagged]

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.regressions else 0


def cell_grid(suite: Suite) -> tuple[SearchSpace, dict[str, list]]:
    """The ablation every (model, dataset) cell of ``suite`` runs: its space and grid (strategies × seeds)."""
    space = ablation_space(suite.strategies, suite.seeds, name=suite.name, max_concurrent=suite.max_concurrent)
    return space, {"strategies": list(space.params["strategies"].choices), "seed": list(suite.seeds)}


def validate_suite(suite: Suite, overrides: list[str], workdir: Path | None = None) -> list[PreparedSweep]:
    """Every cell prepared as its ablation will be (:func:`hardseg.platform.prepare.prepare_sweep`, without
    generating data), before anything is written to MLflow; returns them in the order of ``suite.cells()``."""
    for item in overrides:
        if item.split("=", 1)[0] in GRID_KEYS:
            raise ConfigError(f"--set {item}: the suite's 'strategies' and 'seeds' make the grid; edit the suite")
    space, grid = cell_grid(suite)
    possible = {s for combo in grid["strategies"] for s in combo.split("+")}
    prepared = []
    for model, dataset in suite.cells():
        sets = suite.overrides(model, dataset, overrides)
        for item in sets:  # the suite's own budget too: named as the suite's
            parts = item.split("=", 1)[0].split(".")
            if parts[0] == "strategy_params" and len(parts) > 1 and parts[1] not in possible:
                raise ConfigError(f"suite {suite.name}: '{item.split('=', 1)[0]}' is set but no strategy of the "
                                  f"suite uses '{parts[1]}' (strategies: {', '.join(suite.strategies)})")
        prepared.append(prepare_sweep(space, suite.config, sets, grid=grid, workdir=workdir, dry_run=True))
    return prepared


def previous_nightly(client, exp_id: str, suite_name: str, before_ms: int):
    """The latest FINISHED nightly parent run of ``suite_name`` that started before ``before_ms``, or None."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`{keys.KIND}` = '{keys.NIGHTLY_KIND}' and "
                              f"tags.`{keys.SUITE}` = '{suite_name}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    return next((r for r in runs if (r.info.start_time or 0) < before_ms), None)


def nightly_values(client, nightly_run_id: str, exp_id: str, suite: Suite) -> dict[Key, dict[int, float]]:
    """{(strategy, model, dataset, metric): {seed: final value}} over the FINISHED trials of a nightly."""
    values: dict[Key, dict[int, float]] = {}
    for cell in client.search_runs([exp_id], filter_string=f"tags.`{keys.NIGHTLY_RUN}` = '{nightly_run_id}'",
                                   max_results=1000):
        model, dataset = cell.data.tags.get(keys.NIGHTLY_MODEL, "?"), cell.data.tags.get(keys.NIGHTLY_DATASET, "?")
        df = runs_frame(client, cell)
        for _, row in df[df["status"] == "FINISHED"].iterrows():
            for w in suite.watch:
                value = row.get(w.metric)
                if value is not None and not pd.isna(value) and not pd.isna(row["seed"]):
                    values.setdefault(Key(row["strategies"], model, dataset, w.metric), {})[int(row["seed"])] = value
    return values


def run_nightly(suite: Suite, *, overrides: list[str] | None = None, out_dir: Path | None = None,
                in_process: bool = True, workdir: Path | None = None) -> NightlyOutcome:
    """Run every cell of the suite, compare with the previous nightly, write and log the summary.

    Raises:
        ConfigError: an invalid suite or override, before any MLflow run starts.
    """
    overrides = list(overrides or [])
    base_cfg = validate_suite(suite, overrides, workdir)[0].base
    uri = tracking.resolve_tracking_uri(base_cfg.tracking.uri, workdir)
    # Refuse a multi-node cluster's unshared stores before the nightly's own run exists.
    connect_ray(base_cfg)
    check_multinode(uri, None, base_cfg.ray.storage_path)
    client = tracking.MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(client, base_cfg.tracking.experiment, uri)
    now = time.time()
    stamp, date = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)), time.strftime("%Y-%m-%d", time.localtime(now))
    previous = previous_nightly(client, exp_id, suite.name, int(now * 1000))
    name = f"{suite.name}-{stamp}"
    tags = {**environment_tags(), keys.SUITE: suite.name, keys.NIGHTLY_DATE: date,
            keys.PREVIOUS_NIGHTLY: previous.info.run_id if previous else "none"}
    run_id = open_run(client, exp_id, name, keys.NIGHTLY_KIND, tags=tags, environment={}, params={
        "suite.strategies": json.dumps(suite.strategies), "suite.seeds": json.dumps(suite.seeds),
        "suite.overrides": json.dumps(overrides), "suite.models": json.dumps(list(suite.models)),
        "suite.datasets": json.dumps(list(suite.datasets)), "noise.alpha": suite.noise.alpha,
        "noise.correction": suite.noise.correction},
        texts={"nightly/suite.yaml": yaml.safe_dump(suite.to_dict(), sort_keys=False)})
    print(f"[hardseg] nightly '{name}' (MLflow run {run_id}); previous: "
          f"{previous.data.tags.get(keys.RUN_NAME, previous.info.run_id) if previous else 'none (baseline)'}",
          flush=True)
    cell_runs: dict[str, str] = {}
    space, grid = cell_grid(suite)
    with RunCloser(client, run_id, wrap_errors=False) as nightly:
        for model, dataset in suite.cells():
            out = run_sweep(space, config_path=suite.config, overrides=suite.overrides(model, dataset, overrides),
                            name=f"{name}-{run_id[:6]}-{model}-{dataset}"[:100], grid=grid,
                            kind=keys.ABLATION, in_process=in_process, workdir=workdir,
                            parent_tags={keys.PARENT: run_id, keys.NIGHTLY_RUN: run_id, keys.SUITE: suite.name,
                                         keys.NIGHTLY_MODEL: model, keys.NIGHTLY_DATASET: dataset})
            cell_runs[f"{model}/{dataset}"] = out.parent_run_id
            if out.interrupted:
                nightly.kill(f"cell {model}/{dataset} interrupted")
                return NightlyOutcome(run_id, None, [], Path(), Path(), True, cell_runs)
        cur = nightly_values(client, run_id, exp_id, suite)
        prev = nightly_values(client, previous.info.run_id, exp_id, suite) if previous else {}
        comparisons = compare_nights(prev, cur, suite.modes, suite.noise.alpha, suite.noise.correction)
        folder = Path(out_dir) if out_dir else Path("reports") / "nightly" / name
        md, js = write_summary(folder, suite, name, run_id, tags, previous, comparisons)
        client.log_artifact(run_id, str(md), "nightly")
        client.log_artifact(run_id, str(js), "nightly")
        flagged = [c for c in comparisons if c.flagged]
        metrics = {"nightly/regressions": len(flagged), "nightly/compared": sum(c.status != "new" for c in comparisons)}
        metrics |= {f"{_metric_key(c.key)}": c.cur_mean for c in comparisons if c.cur_mean is not None}
        tracking.log_metrics(client, run_id, metrics)
        tracking.set_tags(client, run_id, {keys.REGRESSIONS: str(len(flagged))})
    for c in flagged:
        print(f"[hardseg] REGRESSION {c.key.cell} {c.key.metric}: {_fmt(c.prev_mean)} -> {_fmt(c.cur_mean)}"
              f" (drop {_fmt(c.drop)} > threshold {_fmt(c.threshold)})" if c.status == "regression" else
              f"[hardseg] REGRESSION {c.key.cell} {c.key.metric}: missing tonight (its trials failed)", flush=True)
    print(f"[hardseg] nightly '{name}': {len(flagged)} regression(s) in {len(comparisons)} comparisons; "
          f"summary {md} and {js}", flush=True)
    return NightlyOutcome(run_id, previous.info.run_id if previous else None, comparisons, md, js, False, cell_runs)


def _metric_key(key: Key) -> str:
    """An MLflow metric name for a cell's seed mean (no '+' allowed there)."""
    return f"{key.strategy.replace('+', '-')}.{key.model}.{key.dataset}/{key.metric}"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_summary(folder: Path, suite: Suite, name: str, run_id: str, tags: dict[str, str], previous,
                  comparisons: list[Comparison]) -> tuple[Path, Path]:
    """``summary.md`` (a table per verdict) and ``summary.json`` (everything) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    flagged = [c for c in comparisons if c.flagged]
    prev_id = previous.info.run_id if previous else None
    unlogged = [w.metric for w in suite.watch if not any(c.key.metric == w.metric for c in comparisons)]
    judged = sum(c.p_adj is not None for c in comparisons)
    data = {"suite": suite.name, "nightly": name, "run_id": run_id, "date": tags[keys.NIGHTLY_DATE],
            "git_commit": tags[keys.GIT_COMMIT], "previous_run_id": prev_id,
            "previous_git_commit": previous.data.tags.get(keys.GIT_COMMIT) if previous else None,
            "noise": suite.noise.model_dump(), "regressions": len(flagged), "unlogged_metrics": unlogged,
            "comparisons": [c.to_dict() for c in comparisons]}
    js = folder / "summary.json"
    js.write_text(json.dumps(data, indent=1))
    lines = [f"# Nightly {name}", "",
             f"Suite **{suite.name}**, {tags[keys.NIGHTLY_DATE]}, commit `{tags[keys.GIT_COMMIT][:12]}`, "
             f"MLflow run `{run_id}`.", ""]
    if previous is None:
        lines += ["No previous FINISHED nightly of this suite: this one is the baseline.", ""]
    else:
        lines += [f"Compared with `{previous.data.tags.get(keys.RUN_NAME, prev_id)}` (run `{prev_id}`, commit "
                  f"`{previous.data.tags.get(keys.GIT_COMMIT, '?')[:12]}`). Regression: one-sided p of the seed mean's "
                  f"drop (t = drop / SE) below α = {suite.noise.alpha} after the multiple-comparison correction: "
                  f"{correction_name(correction_of(suite.noise.correction))} over the {judged} compared keys "
                  f"(threshold: the drop the key's step level asks for); SE from both nights' "
                  f"seed spread (paired when the seeds match), floored by the median over cells.", "",
                  f"**{len(flagged)} regression(s)**" if flagged else "**No regressions.**", ""]
    if unlogged:
        lines += [f"Watched but logged by no trial (check the metric names and data.eval_domains): "
                  f"{', '.join(unlogged)}.", ""]
    lines += ["| cell | metric | previous | tonight | drop | threshold | SE | df | paired | p | p adj. | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(comparisons, key=lambda c: (not c.flagged, c.key.cell, c.key.metric)):
        lines.append(f"| {c.key.cell} | {c.key.metric} | {_fmt(c.prev_mean)} (n={c.n_prev}) | {_fmt(c.cur_mean)} "
                     f"(n={c.n_cur}) | {_fmt(c.drop)} | {_fmt(c.threshold)} | {_fmt(c.se)} | {c.df or '-'} | "
                     f"{'yes' if c.paired else 'no'} | {_fmt(c.p_value, 3)} | {_fmt(c.p_adj, 3)} | "
                     f"{'**' + c.status.upper() + '**' if c.flagged else c.status} |")
    md = folder / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    return md, js

"""The report of a ``hardseg study`` (:mod:`hardseg.platform.study`), read from MLflow only.

It opens with the answer, judged on stage 3's fresh confirmation seeds only:

* the best configuration (best confirmed mean of the study's metric; a searched combination or a
  strategy at its defaults);
* its paired Δ vs the baseline and vs the best single strategy (the stage-1 strategy with the best
  stage-1 mean, i.e. selected before confirmation too), and vs the baseline on each shift family's
  robustness (:func:`hardseg.robustness.robustness`); these tests and every other
  configuration's Δ vs the baseline (the winner is chosen among them) are one family,
  adjusted as the report's ``correction`` says (:func:`hardseg.reports.stats.adjust_p`), with no
  verdict below :data:`hardseg.reports.stats.MIN_PAIRED_SEEDS` paired seeds;
* how much the score it was selected on (its search trial, or its stage-1 mean) overstated its
  confirmed score: the winner's curse, measured.

Then: selection vs confirmation for every configuration, stage 1's table, the search's best
trials and importances (:mod:`hardseg.reports.search`), and the confirmation stage's full report
(:func:`hardseg.reports.publish.write_report`: tables, forest plot and figures, HTML).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.reports import search, stats
from hardseg.reports.answer import verdict
from hardseg.reports.collect import ReportError, runs_frame
from hardseg.reports.domains import with_robustness
from hardseg.reports.publish import write_report
from hardseg.reports.tables import label, md_cell, per_seed, ablation_table, to_markdown



def stage_runs(client: MlflowClient, study_run: Run) -> dict[str, Run]:
    """``{stage: the stage's sweep parent run}`` of a study."""
    runs = client.search_runs([study_run.info.experiment_id],
                              filter_string=f"tags.`{keys.STUDY}` = '{study_run.info.run_id}'", max_results=100)
    return {r.data.tags[keys.STAGE]: r for r in runs if keys.STAGE in r.data.tags}


def _values(df: pd.DataFrame, strategy: str, column: str) -> dict[Any, float]:
    rows = df[(df["status"] == "FINISHED") & (df["strategies"].map(label) == strategy)]
    return per_seed(rows, column)


def paired_cell(df: pd.DataFrame, a: str, b: str, column: str, alpha: float) -> dict[str, Any]:
    """The paired test of label ``a`` - label ``b`` on ``column`` over their shared seeds, as a table cell."""
    va, vb = _values(df, a, column), _values(df, b, column)
    shared = sorted(k for k in va if k in vb and isinstance(k, int))
    cell: dict[str, Any] = {"delta": None, "n_pairs": len(shared), "tested": False, "significant": False,
                            "p_value": None, "p_adj": None, "delta_ci_low": None, "delta_ci_high": None,
                            "sd_diff": None, "seeds_needed": None}
    if not shared:
        return cell
    t = stats.paired_test([va[k] for k in shared], [vb[k] for k in shared], alpha=alpha)
    cell.update(delta=t.delta_mean, p_value=t.p_value, sd_diff=t.sd_diff, delta_ci_low=t.delta_ci_low,
                delta_ci_high=t.delta_ci_high, tested=t.n >= stats.MIN_PAIRED_SEEDS and t.p_value is not None)
    return cell


def correct_cells(cells: list[dict[str, Any]], alpha: float, correction: str) -> None:
    """Adjust the tested cells' p as one family; ``significant`` and ``seeds_needed`` (at the family level)."""
    tested = [c for c in cells if c["tested"]]
    for c, p in zip(tested, stats.adjust_p([c["p_value"] for c in tested], correction) if tested else []):
        c["p_adj"], c["significant"] = float(p), bool(p < alpha)
    level = stats.family_alpha(alpha, len([c for c in cells if c["delta"] is not None]), correction)
    for c in cells:
        if c["delta"] is not None and c["n_pairs"] >= 2 and c["sd_diff"] is not None:
            need = stats.seeds_needed(c["delta"], c["sd_diff"], alpha=level)
            c["seeds_needed"] = None if need is None else max(need, stats.MIN_PAIRED_SEEDS)


def _mean(values: dict[Any, float]) -> float | None:
    return float(np.mean(list(values.values()))) if values else None


def study_markdown(client: MlflowClient, study_run: Run, alpha: float = 0.05,
                   correction: str = "holm") -> tuple[str, Run]:
    """``(the study's Markdown lead: answer, selection vs confirmation, stage 1, search; the confirm stage's run)``."""
    params = study_run.data.params
    metric, mode, baseline = params.get("study.metric", keys.VAL_MIOU), params.get("study.mode", "max"), \
        params.get("study.baseline", "ce")
    better = max if mode == "max" else min
    stages = stage_runs(client, study_run)
    if "confirm" not in stages:
        raise ReportError(f"study '{study_run.info.run_name}' has no confirmation stage yet (stages: "
                          f"{', '.join(stages) or 'none'}); finish it with hardseg study --resume")
    configs = {c["label"]: c for c in (json.loads(v) for k, v in params.items() if k.startswith("study.confirm."))}
    df3 = runs_frame(client, stages["confirm"])
    df1 = runs_frame(client, stages["defaults"]) if "defaults" in stages else df3.iloc[0:0]
    frame, robust = with_robustness(df3, keys.MIOU)
    labels = [s for s in dict.fromkeys(df3["strategies"].map(label)) if _values(df3, s, metric)]
    confirmed = {s: _mean(_values(df3, s, metric)) for s in labels}
    name = study_run.data.tags.get(keys.SWEEP, study_run.info.run_name)
    seeds3 = json.loads(params.get("study.confirm_seeds", "[]"))
    lines = [f"# hardseg study: {name}", "",
             f"MLflow run `{study_run.info.run_id}`. Stage 1: "
             f"{', '.join(json.loads(params.get('study.strategies', '[]')))} at their defaults on seeds "
             f"{params.get('study.seeds')}; stage 2: a search on seed {params.get('study.search_seed')}; stage 3: "
             f"the top {params.get('study.top_k')} searched configurations and every stage-1 strategy on fresh "
             f"seeds {seeds3}. Every verdict below uses stage 3's seeds only.", "", "## Answer", ""]
    others = [s for s in labels if s != baseline]
    if baseline not in confirmed or not others:
        lines += [f"No confirmed runs of the baseline '{baseline}' and another configuration: no answer.", ""]
        return "\n".join(lines), stages["confirm"]
    winner = better(others, key=lambda s: confirmed[s])
    singles = [s for s in json.loads(params.get("study.strategies", "[]")) if s != baseline]
    stage1 = {s: _mean(_values(df1, s, metric)) for s in singles}
    stage1 = {s: v for s, v in stage1.items() if v is not None}
    best_single = better(stage1, key=lambda s: stage1[s]) if stage1 else None
    # One family: every configuration vs the baseline on the metric (the winner is chosen among them,
    # so its test is corrected for that choice), the winner vs the best single strategy, and the winner
    # vs the baseline on each shift family's robustness. Only the winner's lines are printed.
    tests: list[tuple[str, str, str, dict[str, Any]]] = [(s, baseline, metric,
                                                          paired_cell(df3, s, baseline, metric, alpha))
                                                         for s in [winner, *(o for o in others if o != winner)]]
    if best_single and best_single != winner:
        tests.append((winner, best_single, metric, paired_cell(df3, winner, best_single, metric, alpha)))
    for col in robust:
        tests.append((winner, baseline, col, paired_cell(frame, winner, baseline, col, alpha)))
    correct_cells([t[3] for t in tests], alpha, correction)
    beats = (confirmed[winner] > confirmed[baseline]) == (mode == "max") and confirmed[winner] != confirmed[baseline]
    source = configs.get(winner, {})
    how = (f"searched: {', '.join(f'{k}={v}' for k, v in sorted(source.get('sampled', {}).items()))}"
           if source.get("search_score") is not None else "its paper defaults")
    lines.append(f"- **Best configuration**: **{winner}** ({how}), confirmed {metric} {confirmed[winner]:.3f} vs "
                 f"{baseline} {confirmed[baseline]:.3f}" + ("" if beats else f"; no configuration beats {baseline} "
                                                             "on its confirmed mean") + ".")
    for a, b, col, cell in (t for t in tests if t[0] == winner):
        what = " (the best single strategy of stage 1)" if b != baseline else ""
        lines.append(f"- {a}, **{col}** vs {b}{what}: {verdict(cell, col, b, correction)}.")
    selected = source.get("search_score") if source.get("search_score") is not None else stage1.get(winner)
    if selected is not None:
        on = "its search trial" if source.get("search_score") is not None else "its stage-1 mean"
        lines.append(f"- **Winner's curse**: {winner} scored {selected:.3f} on {on} and {confirmed[winner]:.3f} on "
                     f"the confirmation seeds: selection overstated it by {selected - confirmed[winner]:+.3f}.")
    lines.append(f"- Tests above: one family of {len(tests)} ({stats.correction_name(correction)}): every "
                 f"configuration vs {baseline} on {metric} (the winner was chosen among them), the winner vs the best "
                 f"single strategy and vs {baseline} on robustness; \"significant\" refers to the adjusted p; no "
                 f"verdict below {stats.MIN_PAIRED_SEEDS} paired seeds.")
    lines += ["", "## Selection vs confirmation", "",
              f"{metric}: the score each configuration was selected on (its search trial, one seed; or its stage-1 "
              f"mean) against its mean over the confirmation seeds; overstatement = selected - confirmed.", "",
              "| configuration | selected on | selection score | confirmed (mean ± CI) | overstatement |",
              "|---|---|---|---|---|"]
    for s in labels:
        conf = stats.mean_ci(list(_values(df3, s, metric).values()), confidence=1.0 - alpha)
        half = "n/a" if conf.half_width is None else f"{conf.half_width:.3f}"
        sel = configs.get(s, {}).get("search_score")
        on = "search trial"
        if sel is None:
            sel, on = stage1.get(s) if s != baseline else _mean(_values(df1, s, metric)), "stage 1 mean"
        cells = [s, on, "n/a" if sel is None else f"{sel:.3f}", f"{conf.mean:.3f} ± {half}",
                 "n/a" if sel is None else f"{sel - conf.mean:+.3f}"]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    if len(df1):
        t1 = ablation_table(df1, [metric], baseline=baseline, alpha=alpha, correction=correction)
        lines += ["", "## Stage 1: strategies at their defaults", "",
                  *to_markdown(t1).replace("\n## ", "\n### ").split("\n")]
    if "search" in stages:
        df2 = runs_frame(client, stages["search"])
        dists = search.distributions(stages["search"].data.params)
        lines += ["", search.search_markdown(df2, dists, metric, mode).replace("\n## ", "\n### ")
                  .replace("## ", "## Stage 2: ", 1)]
    return "\n".join(lines) + "\n", stages["confirm"]


def write_study_report(client: MlflowClient, study_run: Run, out_dir: Path | str, alpha: float = 0.05,
                       correction: str = "holm") -> dict[str, Path]:
    """Write the study's report to ``out_dir`` (Markdown, HTML, figures, Parquet of stage 3) and log it on
    the study's run and on the confirmation stage's run under ``report/``."""
    lead, confirm_run = study_markdown(client, study_run, alpha, correction)
    params = study_run.data.params
    paths = write_report(client, confirm_run, out_dir, baseline=params.get("study.baseline", "ce"), alpha=alpha,
                         correction=correction, lead=lead)
    for path in paths.values():
        client.log_artifact(study_run.info.run_id, str(path), artifact_path="report")
    return paths

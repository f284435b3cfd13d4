"""``hardseg plan``: the seeds it plans against a simulation, a pilot read from a real SQLite MLflow store
(an ablation and a study's first stage), and bad input (one line, exit 2, nothing logged)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from hardseg.platform.cli import main as cli
from hardseg.reports import plan, stats

SIMS = 20000


@pytest.mark.parametrize("delta, sigma_diff, strategies, metrics, correction", [
    (0.9, 0.5 * math.sqrt(2), 4, 3, "holm"),  # the paper's +0.9 mIoU at σ = 0.5 per run, 4 strategies × 3 metrics
    (0.02, 0.015, 1, 1, "none"),
    (0.01, 0.012, 3, 2, "holm"),
])
def test_planned_seeds_are_the_fewest_a_simulation_detects_at_power_0_8(delta, sigma_diff, strategies, metrics,
                                                                        correction):
    p = plan.plan_from_sigma(delta, sigma_diff=sigma_diff, strategies=strategies, metrics=metrics,
                             correction=correction)
    n = p.seeds_per_cell
    assert n > stats.MIN_PAIRED_SEEDS  # the minimum does not decide these cases
    family = strategies * metrics
    at_n, se_n = plan.simulated_power(delta, sigma_diff, n, family, correction=correction, sims=SIMS, seed=1)
    below, se_below = plan.simulated_power(delta, sigma_diff, n - 1, family, correction=correction, sims=SIMS, seed=2)
    assert at_n >= 0.8 - 3 * se_n, (n, at_n)
    assert below < 0.8 + 3 * se_below, (n, below)
    # the exact power the plan states agrees with the simulation
    assert p.comparisons[0].power == pytest.approx(at_n, abs=4 * se_n + 0.005)


def test_the_issue_numbers():
    p = plan.plan_from_sigma(0.9, sigma_run=0.5, strategies=4, metrics=3, iterations=40000, seconds_per_iter=0.5,
                             gpus=4, seconds_source="--seconds-per-iter")
    assert (p.family, p.level, p.seeds_per_cell, p.runs) == (12, pytest.approx(0.05 / 12), 13, 65)
    assert p.gpu_hours == pytest.approx(65 * 40000 * 0.5 * 4 / 3600)


# -- a pilot in MLflow -------------------------------------------------------------------------
PILOT = {"ce": [0.600, 0.612, 0.605], "hl": [0.611, 0.619, 0.618], "ohem": [0.604, 0.611, 0.611]}
STEP_TIMES = [0.04, 0.05, 0.06]


def _ablation(client: MlflowClient, exp_id: str, name: str, values: dict[str, list[float]],
              tags: dict[str, str] | None = None) -> str:
    parent = client.create_run(exp_id, run_name=name, tags={"hardseg.kind": "ablation", "hardseg.sweep": name,
                                                            **(tags or {})}).info.run_id
    ts = int(time.time() * 1000)
    for strategy, seeds in values.items():
        for seed, v in enumerate(seeds):
            run_id = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "hardseg.strategies": strategy,
                                                     "hardseg.seed": str(seed)}).info.run_id
            client.log_batch(run_id, metrics=[Metric("val/miou", v, ts, 2), Metric("best/val/miou", v, ts, 2),
                                              Metric("best/epoch", 2, ts, 2),
                                              Metric("train/step_time_s", STEP_TIMES[seed], ts, 2)])
            client.set_terminated(run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    sqlite_uri = f"sqlite:///{tmp_path_factory.mktemp('plan')}/mlflow.db"
    client = MlflowClient(sqlite_uri)
    exp_id = client.create_experiment("hardseg")
    pilot = _ablation(client, exp_id, "pilot", PILOT)
    thin = _ablation(client, exp_id, "thin", {"ce": [0.6, 0.61], "hl": [0.62]})
    study = client.create_run(exp_id, run_name="st", tags={"hardseg.kind": "study", "hardseg.sweep": "st"}).info.run_id
    stage = _ablation(client, exp_id, "st-defaults", PILOT, {"mlflow.parentRunId": study, "hardseg.study": study,
                                                             "hardseg.stage": "defaults"})
    return sqlite_uri, client, {"pilot": pilot, "thin": thin, "stage": stage}


def _artifacts(client: MlflowClient, run_id: str) -> list[str]:
    return [f.path for f in client.list_artifacts(run_id, "plan")]


def test_plan_from_a_pilot_uses_its_spread_and_step_time_and_logs_on_its_parent(store, capsys):
    uri, client, runs = store
    rc = cli(["plan", "pilot", "--tracking-uri", uri, "--delta", "0.01", "--iterations", "2000", "--gpus", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    level = 0.05 / 2  # 2 strategies × 1 metric
    need = {}
    for s in ("hl", "ohem"):
        d = np.subtract(PILOT[s], PILOT["ce"])
        n, power = plan.seeds_for(0.01, float(d.std(ddof=1)), level)
        need[s] = n
        assert f"| {s} − ce, val/miou | 3 | {d.mean():+.4g} | {d.std(ddof=1):.4g} | 0.01 | {n} | {power:.3f} |" in out
    n = max(need.values())
    hours = 3 * n * 2000 * float(np.median(STEP_TIMES)) * 2 / 3600
    assert f"**Seeds per cell: {n}**" in out and f"**Cost: {hours:,.1f} GPU-hours**" in out
    assert "the pilot's median train/step_time_s" in out
    assert _artifacts(client, runs["pilot"]) == ["plan/plan.json", "plan/plan.md"]
    assert client.download_artifacts(runs["pilot"], "plan/plan.md") and out.startswith("# hardseg plan")


def test_plan_from_a_study_reads_its_first_stage(store, capsys):
    uri, client, runs = store
    assert cli(["plan", "st", "--tracking-uri", uri, "--seconds-per-iter", "0.5", "--iterations", "100"]) == 0
    out = capsys.readouterr().out
    assert f"MLflow run `{runs['stage']}`" in out and "× 0.5 s/iteration (--seconds-per-iter)" in out
    assert _artifacts(client, runs["stage"]) == ["plan/plan.json", "plan/plan.md"]


def _error(capsys, argv: list[str], *needles: str) -> str:
    rc = cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_bad_input_one_line_exit_2_nothing_logged(store, capsys, tmp_path):
    uri, client, runs = store
    before = {r: _artifacts(client, r) for r in runs.values()}
    _error(capsys, ["plan", "nope", "--tracking-uri", uri, "--delta", "0.01"], "no sweep or ablation named 'nope'",
           "pilot")
    _error(capsys, ["plan", "pilot", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], "no MLflow store")
    for delta in ("0", "-0.5"):
        _error(capsys, ["plan", "pilot", "--tracking-uri", uri, "--delta", delta], "--delta must be a positive")
        _error(capsys, ["plan", "--sigma", "0.5", "--delta", delta], "--delta must be a positive")
    _error(capsys, ["plan", "thin", "--tracking-uri", uri, "--delta", "0.01"], "fewer than 2 FINISHED seeds per cell",
           "hl on val/miou (1)")
    _error(capsys, ["plan", "--delta", "0.9"], "--sigma")
    _error(capsys, ["plan", "--sigma", "0.5", "--delta", "0.9", "--gpus", "0"], "--gpus must be at least 1")
    _error(capsys, ["plan", "pilot", "--tracking-uri", uri, "--metrics", "val/nope"], "val/nope")
    assert {r: _artifacts(client, r) for r in runs.values()} == before and not before[runs["thin"]]

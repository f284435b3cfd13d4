"""``hardseg study`` on real Ray Tune + Optuna + MLflow: three stages, Ctrl-C in the search, --resume, report.

Tiny on purpose (32 px synthetic data, 1 epoch, one in-process worker per trial): the suite's
budget is nearly spent, and the stages are the sweep machinery that tests/test_sweep.py covers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hardseg.platform.cli import main as cli
from hardseg.platform.prepare import prepare_sweep
from hardseg.platform.study import available_studies, load_study

from conftest import small_overrides
from documented import run_documented

STUDY = {
    "name": "tiny", "baseline": "ce", "strategies": ["ce", "focal"], "seeds": [0],
    "base": {"ray.num_workers": 1},
    "search": {"seed": 100, "num_samples": 4, "scheduler": None, "max_concurrent": 1,
               "params": {"strategies": {"categorical": ["focal", "ohem"]},
                          "strategy_params.focal.gamma": {"uniform": [0.5, 3.0]},
                          "strategy_params.ohem.thresh": {"uniform": [0.5, 0.9]}}},
    "confirm": {"top_k": 1, "seeds": [1000, 1001, 1002]},
    "max_concurrent": 1,  # one trial process a stage (each costs seconds of imports)
}


def _one_line_error(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_study_files_are_one_line_errors_before_mlflow(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "study not found: nope" in _one_line_error(capsys, ["study", "nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**STUDY, "confirm": {"top_k": 1, "seeds": [0, 1001, 1002]}}))
    assert "fresh seeds" in _one_line_error(capsys, ["study", str(bad)])
    bad.write_text(yaml.safe_dump({**STUDY, "confirm": {"top_k": 1, "seeds": [1000, 1001]}}))
    assert "confirm.seeds" in _one_line_error(capsys, ["study", str(bad)])
    bad.write_text(yaml.safe_dump({**STUDY, "strategies": ["ce", "nope"]}))
    assert "nope" in _one_line_error(capsys, ["study", str(bad)])
    assert "needs a STUDY" in _one_line_error(capsys, ["study"])
    assert "no study 'gone'" in _one_line_error(capsys, ["study", "--resume", "gone"])
    assert not (tmp_path / "mlruns").exists()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _search_done(log: Path) -> bool:
    text = log.read_text()
    return "stage 'search'" in text and " DONE " in text.split("stage 'search'", 1)[1]


@pytest.mark.ray
@pytest.mark.slow
def test_study_sigint_in_search_then_resume_and_report(data_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    sets = sum((["--set", o] for o in small_overrides(data_root, **{
        "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": uri, "train.epochs": 1})), [])
    exe = str(Path(sys.executable).parent / "hardseg")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "study", str(study), "--name", "st", *sets], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: _search_done(log), 300, "a finished search trial")
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 130, log.read_text()[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hardseg")
    parent = client.search_runs([exp.experiment_id], "tags.`hardseg.kind` = 'study'")[0]
    assert parent.info.status == "KILLED" and "--resume st" in parent.data.tags["hardseg.stop_reason"]
    search = client.search_runs([exp.experiment_id], "tags.`hardseg.stage` = 'search'")[0]
    before = {r.data.tags["hardseg.trial_id"]: r.info.end_time for r in client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{search.info.run_id}'") if r.info.status == "FINISHED"}
    assert 1 <= len(before) < 4, log.read_text()[-3000:]

    # docs/usage.md's resume as written (NAME: st); added: --storage-path
    res = run_documented("hardseg study --resume NAME", "--storage-path", str(tmp_path / "runs"),
                         replace={"NAME": "st"}, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    stages = {r.data.tags["hardseg.stage"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.`hardseg.study` = '{parent.info.run_id}'")}
    assert set(stages) == {"defaults", "search", "confirm"}
    assert all(r.info.status == "FINISHED" for r in stages.values())
    children = {s: client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{r.info.run_id}'")
                for s, r in stages.items()}
    assert len(children["defaults"]) == 2  # ce and focal on seed 0, not rerun by --resume
    after = {r.data.tags["hardseg.trial_id"]: r for r in children["search"]}
    assert len(after) == 4 and all(r.info.status == "FINISHED" for r in after.values())
    assert all(after[t].info.end_time == end for t, end in before.items())  # finished trials not repeated
    optuna_study = optuna.load_study(study_name="st-search", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert len(optuna_study.trials) == 4
    # the resumed search told Optuna every trial as it ended: COMPLETE, its one epoch an intermediate value
    assert all(t.state.name == "COMPLETE" and t.intermediate_values == {1: t.value} for t in optuna_study.trials)
    assert {r.data.params["seed"] for r in after.values()} == {"100"}
    # stage 3: ce, focal (defaults) and the top searched configuration, each on the 3 fresh seeds
    cells = sorted((r.data.tags["sampled.config"], r.data.params["seed"]) for r in children["confirm"])
    labels = sorted({c for c, _ in cells})
    assert labels[:2] == ["ce", "focal"] and labels[2].startswith("search1:") and len(labels) == 3
    assert cells == sorted((c, s) for c in labels for s in ("1000", "1001", "1002"))
    md = (tmp_path / "reports" / "st" / "report.md").read_text()
    head = md.split("## Selection vs confirmation")[0]
    assert md.startswith("# hardseg study: st") and "## Answer" in head and "**Best configuration**" in head
    assert "Winner's curse" in head and "vs ce" in head and "robustness/fog/miou" in head
    assert "## Stage 2: Search" in md and "## Confirmation" not in head
    assert "| search1:" in md.split("## Selection vs confirmation")[1]
    assert {"report/report.md", "report/report.html"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id, "report")}


def test_search_states_are_optunas_and_survive_a_resume(tmp_path):
    """The study's search stage tells Optuna PRUNED / COMPLETE / FAIL with every evaluation as an intermediate
    value at its epoch; ``--resume`` restores the searcher (``Tuner.restore`` calls its save/restore) and the
    states stay as they were. Real Optuna on SQLite; the searcher is driven as Tune drives it."""
    from hardseg.platform.sweep import make_searcher
    from hardseg.search_spaces import SearchSpace

    space = SearchSpace.from_dict({"name": "s", "params": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
                                   "sweep": {"num_samples": 4, "metric": "val/miou", "mode": "max", "seed": 0}},
                                  source="s")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(space, storage, "st-search", max_epochs=3)
    for t in ("t1", "t2", "t3", "t4"):
        assert "train.lr" in searcher.suggest(t)
    curves = {"t1": [0.40], "t2": [0.40, 0.50, 0.60], "t3": [0.30, 0.35], "t4": [0.45]}
    for t, curve in curves.items():
        for epoch, v in enumerate(curve[:-1], 1):
            searcher.on_trial_result(t, {"epoch": epoch, "val/miou": v})
    # t1: ASHA stops it on its first result (Tune then skips on_trial_result and completes it with that result)
    searcher.on_trial_complete("t1", {"epoch": 1, "val/miou": 0.40})
    searcher.on_trial_result("t2", {"epoch": 3, "val/miou": 0.60})
    searcher.on_trial_complete("t2", {"epoch": 3, "val/miou": 0.60})
    searcher.on_trial_complete("t3", {"epoch": 2, "val/miou": 0.35}, error=True)
    searcher.save(str(tmp_path / "searcher.pkl"))  # the sweep is interrupted while t4 runs

    resumed = make_searcher(space, storage, "st-search", max_epochs=3)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t4", {"epoch": 1, "val/miou": 0.45})
    resumed.on_trial_result("t4", {"epoch": 1, "val/miou": 0.45})  # a restored trial repeating its epoch
    resumed.on_trial_result("t4", {"epoch": 2, "val/miou": 0.55})
    resumed.on_trial_complete("t4", {"epoch": 2, "val/miou": 0.55})  # stopped at the second rung

    study = optuna.load_study(study_name="st-search", storage=storage)
    got = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert {k: t.state.name for k, t in got.items()} == {"t1": "PRUNED", "t2": "COMPLETE", "t3": "FAIL",
                                                          "t4": "PRUNED"}
    # Optuna's own convention: a PRUNED trial's value is its last intermediate value (the step it reached)
    assert got["t1"].intermediate_values == {1: 0.40} and got["t1"].value == 0.40
    assert got["t2"].intermediate_values == {1: 0.40, 2: 0.50, 3: 0.60} and got["t2"].value == 0.60
    assert got["t3"].intermediate_values == {1: 0.30} and got["t3"].value is None
    assert got["t4"].intermediate_values == {1: 0.45, 2: 0.55} and got["t4"].value == 0.55
    assert [got[k].user_attrs["ended"] for k in ("t1", "t2", "t3", "t4")] == [
        "stopped early", "finished", "failed", "stopped early"]


def test_per_strategy_asha_prunes_a_trial_only_against_its_own_strategies():
    """The study's search scheduler (``per_strategy: true``): a slow-starting HL trial is not stopped at the
    first rung by faster-starting focal trials, as plain ASHA stops it; a worse HL trial still is."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from hardseg.platform.sweep import StrategyASHAScheduler

    def first_rung(kind) -> dict[str, str]:
        sched = kind(time_attr="epoch", metric="val/miou", mode="max", max_t=3, grace_period=1, reduction_factor=2)
        decisions = {}
        for tid, strategy, value in [("f1", "focal", 0.40), ("f2", "focal", 0.42), ("h1", "hl", 0.30),
                                     ("h2", "hl", 0.20)]:
            trial = SimpleNamespace(trial_id=tid, config={"strategies": strategy})
            sched.on_trial_add(None, trial)
            decisions[tid] = sched.on_trial_result(None, trial, {"epoch": 1, "val/miou": value})
        return decisions

    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    assert first_rung(ASHAScheduler) == {"f1": go, "f2": go, "h1": stop, "h2": stop}
    assert first_rung(StrategyASHAScheduler) == {"f1": go, "f2": go, "h1": go, "h2": stop}


@pytest.mark.parametrize("name", available_studies())
def test_shipped_study_searches_only_settings_that_act(name, tmp_path):
    """Each shipped study's search stage, prepared as the study prepares it: no strategy warning (e.g. HL's λ,
    which the default AdamW cancels; the quick study searches the branch's lr_mult)."""
    study = load_study(name)
    sets = [*study.overrides([]), f"seed={study.search.seed}"]
    prepared = prepare_sweep(study.search_space(), study.config, sets, workdir=tmp_path, dry_run=True)
    assert prepared.warning_lines == [], prepared.warning_lines

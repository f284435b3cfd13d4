"""Sweeps and ablations on real Ray Tune + OptunaSearch, with real MLflow and Optuna stores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hardseg.platform.cli import main as cli
from hardseg.platform.sweep import run_sweep
from hardseg.search_spaces import SearchSpace

from conftest import small_overrides
from documented import run_documented

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def _space(params: dict, sweep: dict, base: dict | None = None, name: str = "t") -> SearchSpace:
    return SearchSpace.from_dict({"name": name, "base": base or {}, "params": params, "sweep": sweep}, source=name)


def _runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hardseg")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _overrides(data_root: Path, tmp_path: Path, uri: str, **extra) -> list[str]:
    return small_overrides(data_root, **{"ray.storage_path": str(tmp_path / "runs"), "tracking.uri": uri,
                                         "data.eval_domains": "[]", **extra})


def test_optuna_asha_sweep_records_parent_children_and_study(ray_local, data_root, sqlite_uri, tmp_path, capfd):
    space = _space({"strategies": {"categorical": ["ce", "hl", "focal"]},
                    "train.lr": {"loguniform": [1e-3, 1e-2]},
                    "strategy_params.hl.lam": {"loguniform": [1e-3, 1e-1]}},
                   # one trial at a time: one reused trial process (a second would cost its imports, 6 CPU-s)
                   {"num_samples": 5, "metric": "val/miou", "mode": "max", "seed": 0, "max_concurrent": 1,
                    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}})
    out = run_sweep(space, overrides=_overrides(data_root, tmp_path, sqlite_uri, **{"ray.num_workers": 1,
                                                                                    "train.epochs": 3}),
                    name="asha", workdir=tmp_path)
    client, parents, children = _runs(sqlite_uri)
    assert [p.info.run_id for p in parents] == [out.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["hardseg.kind"] == "sweep"
    assert parent.data.params["space.train.lr"] and "git_commit" in parent.data.tags
    assert parent.data.tags["hardseg.best_run_id"] in {c.info.run_id for c in children}
    assert "best/val/miou" in parent.data.metrics and parent.data.params["best.strategies"] in {"ce", "hl", "focal"}
    # One child per trial, each closed, with its sampled params and per-epoch metrics.
    assert len(children) == 5 and len({c.data.tags["hardseg.trial_id"] for c in children}) == 5
    for c in children:
        assert c.info.status in {"FINISHED", "KILLED"}, c.data.tags
        assert c.data.tags["mlflow.parentRunId"] == out.parent_run_id
        assert c.data.params["strategies"] == f"['{c.data.tags['sampled.strategies']}']"
        assert ("strategy_params.hl.lam" in c.data.params) == (c.data.tags["sampled.strategies"] == "hl")
        epochs = [m.step for m in client.get_metric_history(c.info.run_id, "val/miou")]
        assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) <= 3
        if c.info.status == "KILLED":
            assert "stopped by the" in c.data.tags["hardseg.stop_reason"] and len(epochs) < 3
        else:
            assert len(epochs) == 3
    assert sum(c.info.status == "FINISHED" for c in children) >= 1
    # The live table's last print: a finished trial DONE, one ASHA stopped STOPPED
    table = capfd.readouterr().out.rsplit("trial        strategy", 1)[1]
    for c in children:
        status = "DONE" if c.info.status == "FINISHED" else "STOPPED"
        assert re.search(rf"^{c.data.tags['hardseg.trial_id']} .* {status} ", table, re.M), (status, table)
    # The Optuna study holds the same trials, with their values and how they ended.
    # Pruned is pruned: a trial ASHA stopped is PRUNED, a finished one COMPLETE, and every epoch's
    # val/miou is an intermediate value at that epoch (also the one the scheduler stopped it on).
    study = optuna.load_study(study_name="asha", storage=out.optuna_storage)
    assert len(study.trials) == 5
    by_trial = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert set(by_trial) == {c.data.tags["hardseg.trial_id"] for c in children}
    for c in children:
        t = by_trial[c.data.tags["hardseg.trial_id"]]
        assert t.params["strategies"] == c.data.tags["sampled.strategies"]
        history = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "val/miou")}
        assert t.intermediate_values == pytest.approx(history)
        if c.info.status == "FINISHED":
            assert t.state.name == "COMPLETE" and t.value == pytest.approx(history[3])
            assert t.user_attrs["ended"] == "finished"
        else:
            assert t.state.name == "PRUNED" and t.user_attrs["ended"] == "stopped early"
            assert t.value == pytest.approx(history[max(history)])  # Optuna: a pruned trial's last report
    # The report of a real search: its Search section and slice plot (train.lr is in every trial).
    from hardseg.reports.publish import write_report

    paths = write_report(client, client.get_run(out.parent_run_id), tmp_path / "report")
    md = paths["markdown"].read_text()
    finished = sum(c.info.status == "FINISHED" for c in children)
    assert "## Search" in md and f"{finished} of 5 trials FINISHED" in md and paths["slice_png"].is_file()


def test_failing_and_nan_trials_fail_while_the_others_finish(ray_local, data_root, sqlite_uri, tmp_path, capfd):
    # A grid: batch 1000 > the training set raises inside the trial; lr 1e12 (SGD) makes the loss NaN.
    # One Tune retry per trial (ray.max_failures=1): a trial that failed in its own code is not trained again.
    space = _space({"train.batch_size": {"categorical": [8, 1000]}, "train.lr": {"categorical": [0.003, 1e12]}},
                   {"num_samples": 4, "metric": "val/miou", "mode": "max"})
    overrides = [o for o in _overrides(data_root, tmp_path, sqlite_uri, **{"ray.num_workers": 1,
                                                                           "train.optimizer": "sgd",
                                                                           "ray.max_failures": 1})
                 if not o.startswith("train.batch_size=")]
    out = run_sweep(space, overrides=overrides, name="faults", workdir=tmp_path,
        grid={"train.batch_size": [8, 1000], "train.lr": [0.003, 1e12]})
    client, parents, children = _runs(sqlite_uri)
    assert len(children) == 4 and parents[0].info.status == "FINISHED"
    by = {(c.data.params["train.batch_size"], c.data.params["train.lr"]): c for c in children}
    assert by[("8", "0.003")].info.status == "FINISHED"
    nan = by[("8", "1000000000000.0")]
    assert nan.info.status == "FAILED" and "non-finite loss" in nan.data.tags["hardseg.error"]
    for lr in ("0.003", "1000000000000.0"):
        big = by[("1000", lr)]
        assert big.info.status == "FAILED" and "train.batch_size=1000" in big.data.tags["hardseg.error"]
    assert out.statuses == {"FINISHED": 1, "FAILED": 3}
    assert parents[0].data.tags["hardseg.best_run_id"] == by[("8", "0.003")].info.run_id
    # Tune's retry of each failed trial raised the recorded reason without reopening (or training in) its run
    printed = capfd.readouterr()
    for c in children:
        if c.info.status == "FAILED":
            assert "hardseg.restarts" not in c.data.tags, c.data.tags
            assert f"trial {c.data.tags['hardseg.trial_id']} failed before (" in printed.out + printed.err
    # Each in-process trial removed its copy of the last checkpoint (platform/tune_session.py), failed or not.
    for c in children:
        assert not list(Path(tempfile.gettempdir()).glob(f"hardseg-trial-{c.info.run_id}-*")), c.info.run_id


def test_multi_objective_sweep_gives_optuna_both_values(ray_local, data_root, sqlite_uri, tmp_path):
    """Two objectives (no scheduler); trials with 2 DDP workers each: tests/test_worker_groups.py."""
    space = _space({"strategies": {"categorical": ["ce", "ohem"]}},
                   {"num_samples": 2, "objectives": [{"metric": "val/miou", "mode": "max"},
                                                     {"metric": "val/band_iou", "mode": "max"}], "seed": 1,
                    "max_concurrent": 1})
    out = run_sweep(space, overrides=_overrides(data_root, tmp_path, sqlite_uri, **{"ray.num_workers": 1}), name="mo",
                    workdir=tmp_path)
    client, parents, children = _runs(sqlite_uri)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for c in children:  # the model artifact of the trial's last checkpoint
        assert {a.path for a in client.list_artifacts(c.info.run_id, "model")} >= {"model/model_export.pt"}
    study = optuna.load_study(study_name="mo", storage=out.optuna_storage)
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.trials)


def test_invalid_space_is_rejected_before_any_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["sweep", "quickstart", "--set", "train.lr=0.1"]) == 2
    assert "'train.lr' is a parameter of space quickstart" in capsys.readouterr().err
    assert cli(["ablate", "--strategies", "ce", "hl", "--set", "strategy_params.ohem.thresh=0.5"]) == 2
    assert "no trial of space ablation uses 'ohem'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"train.lrr": {"uniform": [0.1, 0.2]}}}))
    assert cli(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lrr" in err[0]
    bad.write_text(yaml.safe_dump({"params": {"train.lr": {"loguniform": [0.0, 0.1]}}}))
    assert cli(["sweep", str(bad)]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "hardseg-runs").exists()


def test_demo_ablation_grid_is_strategies_times_seeds_with_report(ray_local, data_root, sqlite_uri, tmp_path,
                                                                   capsys, monkeypatch):
    """``hardseg demo`` (= ``hardseg ablate`` ce hl ohem × seeds 0 1 2, then ``hardseg report``) on tiny data."""
    monkeypatch.chdir(tmp_path)
    args = ["demo"]  # the demo's own overrides come first; these (tiny data, 2 epochs) win
    for o in _overrides(data_root, tmp_path, sqlite_uri, **{"data.eval_domains": "[fog-1,fog-3]"}):
        args += ["--set", o]
    assert cli(args) == 0
    client, parents, children = _runs(sqlite_uri)
    assert len(parents) == 1 and parents[0].data.tags["hardseg.kind"] == "ablation"
    cells = sorted((c.data.tags["hardseg.strategies"], c.data.tags["hardseg.seed"]) for c in children)
    assert cells == [(s, seed) for s in ("ce", "hl", "ohem") for seed in ("0", "1", "2")]
    assert all(c.info.status == "FINISHED" for c in children)
    # Identical budgets and data: only strategies and seed differ between the cells.
    differing = {k for c in children for k, v in c.data.params.items() if v != children[0].data.params.get(k)}
    assert {k for k in differing if not k.startswith("strategy_params")} <= {"strategies", "seed", "name"}
    ohem = [c for c in children if c.data.tags["hardseg.strategies"] == "ohem"]
    assert all(c.data.params["strategy_params.ohem.min_kept_fraction"] == "0.1" for c in ohem)
    assert not any("strategy_params.ohem.min_kept_fraction" in c.data.params for c in children
                   if c.data.tags["hardseg.strategies"] != "ohem")
    out = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri" in out
    # The demo's report: written under ./reports/<name>/ and logged on the parent run.
    folder = tmp_path / "reports" / parents[0].data.tags["hardseg.sweep"]
    md = (folder / "report.md").read_text()
    assert "| ce | 3 |" in md and "| hl | 3 |" in md and "| ohem | 3 |" in md and "## fog-3" in md
    assert md.split("\n## ")[1].startswith("Answer")  # the answer comes before every table
    assert "Tests: " in md and "multiple-comparison correction: Holm-Bonferroni" in md
    assert {"report.html", "runs.parquet", "metrics.png", "domains.png", "hl_maps.png", "forest.png"} <= {
        p.name for p in folder.iterdir()}
    assert str(folder / "report.html") in out
    # The console: hardseg's lines, no Tune experiment box or TensorBoard hint (hardseg.platform.console).
    assert "Configuration for experiment" not in out and "tensorboard" not in out.lower()
    # The MLflow UI: runs table, children named by what differs, the report's answer as description.
    assert client.get_experiment(parents[0].info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    names = sorted(c.info.run_name for c in children)
    assert names == [f"{s} · seed {k}" for s in ("ce", "hl", "ohem") for k in (0, 1, 2)]
    note = client.get_run(parents[0].info.run_id).data.tags["mlflow.note.content"]
    assert "## Answer" in note and "val/miou" in note  # the report's answer paragraph


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigint_then_resume_finishes_exactly_the_remaining_trials(data_root, sqlite_uri, tmp_path):
    """Interrupted and resumed, with the sweep's storage given as a URI (``file://``, as ``s3://`` would be)."""
    storage = f"file://{tmp_path / 'runs'}"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "r", "params": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
                                     "sweep": {"num_samples": 4, "metric": "val/miou", "mode": "max", "seed": 0,
                                               "max_concurrent": 1}}))
    sets = sum((["--set", o] for o in _overrides(data_root, tmp_path, sqlite_uri, **{
        "ray.num_workers": 1, "train.epochs": 4, "data.synthetic.n_train": 64, "ray.storage_path": storage})), [])
    exe = str(Path(sys.executable).parent / "hardseg")
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen([exe, "sweep", str(space), "--name", "res", *sets], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        # The live table marks a finished trial DONE (polling the log, not the SQLite store,
        # so this test never races the sweep's own creation of the MLflow schema).
        _wait_for(lambda: " DONE " in (tmp_path / "sweep.log").read_text(), 240, "a finished trial")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    _, parents, children = _runs(sqlite_uri)
    assert rc == 130, (tmp_path / "sweep.log").read_text()[-3000:]
    # the script's quick exit (cli.entry_point) stopped the Ray runtime it started
    deadline = time.time() + 10  # Ray's workers end once their raylet has
    while _ray_session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_session_processes(proc.pid), _ray_session_processes(proc.pid)
    assert parents[0].info.status == "KILLED" and "--resume res" in parents[0].data.tags["hardseg.stop_reason"]
    assert all(c.info.status in TERMINAL for c in children) and len(children) < 4
    done_before = {c.data.tags["hardseg.trial_id"] for c in children if c.info.status == "FINISHED"}

    assert (tmp_path / "runs" / "sweeps" / "res" / "hardseg_sweep.json").is_file()
    # docs/usage.md's resume as written (the sweep is named 'res' here); added: --storage-path
    res = run_documented("hardseg sweep --resume my-sweep", "--storage-path", storage, replace={"my-sweep": "res"},
                         cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _, parents, children = _runs(sqlite_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["hardseg.trial_id"] for c in children]
    assert len(children) == 4 and len(set(trial_ids)) == 4  # no duplicate run for a restarted trial
    assert all(c.info.status == "FINISHED" for c in children)
    assert done_before <= set(trial_ids)
    study = optuna.load_study(study_name="res", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)


def _ray_session_processes(pid: int) -> list[int]:
    """The processes of the Ray session process ``pid`` started (Ray names its session folder after that pid)."""
    from hardseg.platform.local_cluster import node_pids

    return [p for d in Path(tempfile.gettempdir(), "ray").glob(f"session_*_{pid}") for p in node_pids(str(d))]


def test_iteration_sweep_counts_iterations_and_evaluates_at_its_interval(ray_local, data_root, sqlite_uri, tmp_path):
    """With train.iters, Tune's time and ASHA's grace period are iterations, and trials evaluate every
    train.eval_interval iterations (3 evaluations of 24 iterations, not one per pass over the data)."""
    space = _space({"train.lr": {"loguniform": [1e-3, 1e-2]}},
                   {"num_samples": 3, "metric": "val/miou", "mode": "max", "seed": 0, "max_concurrent": 1,
                    "scheduler": {"type": "asha", "grace_period": 8, "reduction_factor": 2}})
    out = run_sweep(space, overrides=_overrides(data_root, tmp_path, sqlite_uri, **{
        "ray.num_workers": 1, "train.iters": 24, "train.epochs": "null", "train.eval_interval": 8,
        "train.log_interval": 0, "train.log_images_every": 0}), name="iters", workdir=tmp_path)
    client, parents, children = _runs(sqlite_uri)
    assert parents[0].data.params["sweep.unit"] == "iteration" and len(children) == 3
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val/miou")]
        assert steps and steps == [8, 16, 24][:len(steps)], steps
        if c.info.status == "KILLED":
            assert "after iteration" in c.data.tags["hardseg.stop_reason"] and len(steps) < 3
        else:
            assert c.info.status == "FINISHED" and len(steps) == 3 and c.data.metrics["best/iteration"] in (8, 16, 24)
    assert out.statuses.get("FINISHED", 0) >= 1

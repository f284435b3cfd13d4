"""Sweep trials that lose their process: Tune retries them from their last checkpoint in the same MLflow
child run (``ray.max_failures``), and ``sweep --resume NAME --retry-failed`` reruns those that ran out of
retries. The process is killed for real (SIGKILL of the trial's Ray actor), on a real local Ray runtime.
The same on a two-node cluster, killing a whole node: tests/test_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.platform.sweep import resume_sweep, run_sweep
from hardseg.search_spaces import SearchSpace

from conftest import small_overrides, trial_actors

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCHS = 5


def _space() -> SearchSpace:
    return SearchSpace.from_dict({"name": "f", "params": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
                                  "sweep": {"num_samples": 1, "metric": "val/miou", "mode": "max", "seed": 0}},
                                 source="f")


def _child(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hardseg")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def kill_trial_after_epoch(uri: str, epoch: int, timeout: float = 300) -> tuple[int, int]:
    """Wait until the sweep's one trial logged ``epoch`` (so the checkpoint of the epoch before is stored),
    then SIGKILL the trial's Ray actor process; returns (pid, epochs logged by then)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        client, children = _child(uri)
        if children and max(_epochs_logged(client, children[0].info.run_id), default=0) >= epoch:
            actors = trial_actors()
            assert len(actors) == 1, [a.cmdline()[:1] for a in actors]
            logged = max(_epochs_logged(client, children[0].info.run_id))
            os.kill(actors[0].pid, signal.SIGKILL)
            return actors[0].pid, logged
        time.sleep(0.2)
    raise AssertionError(f"the trial never logged epoch {epoch}")


def plant_stale_stop(experiment: Path, trial_id: str) -> None:
    """Put the ``STOP`` Ray Tune saves for a trial whose process died while Tune waited for its checkpoint
    into the experiment's saved state (``runner_data`` of ``experiment_state-*.json``, as Tune writes it), so
    the restore meets it every time, not only when the kill lands in a save (hardseg.platform.tune_state)."""
    for path in experiment.glob("experiment_state-*.json"):
        state = json.loads(path.read_text())
        state["runner_data"]["_cached_trial_decisions"][trial_id] = "STOP"
        path.write_text(json.dumps(state))


def _sweep_in_thread(data_root: Path, tmp_path: Path, uri: str, name: str, max_failures: int):
    overrides = small_overrides(data_root, **{"ray.storage_path": str(tmp_path / "runs"), "tracking.uri": uri,
                                              "data.eval_domains": "[]", "ray.num_workers": 1,
                                              "train.epochs": EPOCHS, "ray.max_failures": max_failures})
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(o=run_sweep(_space(), overrides=overrides, name=name,
                                                                    workdir=tmp_path)))
    thread.start()
    return thread, out


def test_a_killed_trial_goes_on_from_its_checkpoint_in_the_same_run(ray_local, data_root, sqlite_uri, tmp_path):
    thread, out = _sweep_in_thread(data_root, tmp_path, sqlite_uri, "kill-retry", max_failures=1)
    pid, logged = kill_trial_after_epoch(sqlite_uri, 2)
    thread.join(600)
    client, children = _child(sqlite_uri)
    assert len(children) == 1, [c.info.status for c in children]
    run = children[0]
    resumed = int(run.data.tags["hardseg.resumed_from_epoch"])
    print(f"trial process {pid} killed after epoch {logged} was logged; retried from epoch {resumed}, "
          f"run {run.info.run_id} {run.info.status}, restarts {run.data.tags.get('hardseg.restarts')}")
    assert run.info.status == "FINISHED" and out["o"].statuses == {"FINISHED": 1}
    assert run.data.tags["hardseg.restarts"] == "1" and 1 <= resumed <= logged
    assert set(_epochs_logged(client, run.info.run_id)) == set(range(1, EPOCHS + 1))  # no epoch missing


def test_retry_failed_reruns_a_trial_that_ran_out_of_retries(ray_local, data_root, sqlite_uri, tmp_path):
    thread, out = _sweep_in_thread(data_root, tmp_path, sqlite_uri, "kill-fail", max_failures=0)
    kill_trial_after_epoch(sqlite_uri, 2)
    thread.join(600)
    client, (failed,) = _child(sqlite_uri)
    assert failed.info.status == "FAILED" and out["o"].statuses == {"FAILED": 1}
    reason = failed.data.tags["hardseg.error"]
    assert reason.startswith("the trial's process died after epoch")
    plant_stale_stop(tmp_path / "runs" / "sweeps" / "kill-fail", failed.data.tags[keys.TRIAL_ID])

    again = resume_sweep("kill-fail", storage_path=str(tmp_path / "runs"), workdir=tmp_path, retry_failed=True)
    client, children = _child(sqlite_uri)
    assert len(children) == 1 and children[0].info.run_id == failed.info.run_id  # the same child run
    run = children[0]
    print(f"--retry-failed: run {run.info.run_id} {run.info.status} (before: FAILED, '{reason}'), "
          f"resumed from epoch {run.data.tags.get('hardseg.resumed_from_epoch')}")
    assert run.info.status == "FINISHED" and again.statuses == {"FINISHED": 1}
    assert run.data.tags["hardseg.previous_error"] == reason and "hardseg.error" not in run.data.tags
    assert int(run.data.tags["hardseg.resumed_from_epoch"]) >= 1
    assert set(_epochs_logged(client, run.info.run_id)) == set(range(1, EPOCHS + 1))
    study = optuna.load_study(study_name="kill-fail", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # the rerun as a COMPLETE copy

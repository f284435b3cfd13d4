"""Iteration schedules and resuming: the schedule's arithmetic against mmsegmentation's formula, a run
SIGKILLed after a checkpoint and resumed ending with exactly the metrics of an uninterrupted one (in a
plain process, and as ``hardseg train --resume`` in the same MLflow run), and --resume's bad input."""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch
from mlflow.tracking import MlflowClient

from hardseg import keys
from hardseg.config import load_config
from hardseg.platform import runs, tracking
from hardseg.platform.cli import main as cli
from hardseg.platform.train_job import run_training
from hardseg.trainables.local import run_local
from hardseg.trainables.schedule import Schedule

import fault_session
from conftest import small_overrides
from test_cli_errors import _check, _no_runs

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("images_per_s", "time_s", "first_step_unix", "wall_time_s")
# 24 iterations of 8 per pass: checkpoints after 6, 12 and 18 fall within passes (the sampler's
# position and the RNG states must come back), HL's own module and optimiser group go with them.
ITERS = {"train.iters": 24, "train.epochs": "null", "train.eval_interval": 6, "train.log_interval": 3,
         "strategies": "[hl]", "train.optimizer": "sgd", "train.lr": 0.05, "train.warmup_iters": 4,
         "train.min_lr": 0.001, "train.log_images_every": 2, "train.keep_checkpoints": 1}


def mmseg_lr(it: int, lr: float, iters: int, power: float, min_lr: float, warmup: int, ratio: float) -> float:
    """mmcv's PolyLrUpdaterHook (by iteration) with warmup='linear', written out independently."""
    regular = (lr - min_lr) * (1 - it / iters) ** power + min_lr
    if it >= warmup:
        return regular
    return regular * (1 - (1 - it / warmup) * (1 - ratio))


def test_schedule_is_mmsegmentations_poly_with_linear_warmup():
    train = load_config(None, ["train.iters=40000", "train.lr=0.01", "train.min_lr=1e-4", "train.warmup_iters=1500",
                               "train.warmup_ratio=1e-6", "train.eval_interval=4000"]).train
    s = Schedule.from_config(train, 371)
    for it in (0, 1, 750, 1499, 1500, 20000, 39999, 40000):
        assert abs(s.lr_at(it) - mmseg_lr(it, 0.01, 40000, 0.9, 1e-4, 1500, 1e-6)) <= 1e-12, it
    assert s.points("evaluate") == list(range(4000, 40001, 4000)) == s.points("checkpoint")
    long = Schedule.from_config(load_config(None, ["train.iters=80000", "train.eval_interval=8000"]).train, 100)
    assert len(long.points("evaluate")) == 10 and sum(long.reports(d) for d in range(1, 80001)) == 10
    # An epoch config keeps its old arithmetic: no floor, warm-up from zero, a report every epoch.
    epochs = Schedule.from_config(load_config(None, ["train.epochs=3", "train.warmup_epochs=1"]).train, 10)
    assert epochs.lr_at(0) == 0.003 * (1 / 10) and epochs.lr_at(15) == 0.003 * max(0.0, 1 - 15 / 30) ** 0.9
    assert [d for d in range(1, 31) if epochs.reports(d)] == [10, 20, 30] and epochs.length == 3


def _final(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, float) and not any(t in k for t in TIMING)}


def _same(a: dict, b: dict) -> None:
    assert len(a) > 20 and set(a) == set(b)
    for k in a:
        assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (k, a[k], b[k])


def test_plain_process_killed_after_a_checkpoint_resumes_to_the_same_metrics(data_root, tmp_path):
    overrides = small_overrides(data_root, **ITERS, **{"train.num_threads": 1})
    cfg = load_config(None, overrides)
    reference = run_local(cfg)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_session.py"), str(out), "15", *overrides],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(out / "checkpoint_latest" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 12 and state["best_file"] in {p.name for p in (out / "best").iterdir()}
    assert len(list((out / "best").iterdir())) == 1  # train.keep_checkpoints: 1, the best once
    resumed = run_local(cfg, out)
    assert [h["iteration"] for h in resumed] == [18, 24]
    _same(_final(resumed[-1]), _final(reference[-1]))


@pytest.mark.parametrize("sets, needles", [
    (["train.epochs=3", "train.iters=100"], ["set train.epochs or train.iters, not both"]),
    (["train.iters=100", "train.eval_interval=500"], ["train.eval_interval=500 is longer than the run",
                                                      "train.iters=100"]),
    (["train.epochs=4", "train.checkpoint_interval=5"], ["train.checkpoint_interval=5", "train.epochs=4"]),
    (["train.iters=100", "train.warmup_iters=100"], ["train.warmup_iters=100"]),
])
def test_bad_schedule_is_one_line_exit_2_and_nothing_logged(capsys, sqlite_uri, sets, needles):
    _check(capsys, ["train", *sum((["--set", x] for x in sets), []), "--tracking-uri", sqlite_uri], *needles)
    assert _no_runs(sqlite_uri)


def test_resume_bad_input_is_one_line_and_touches_no_run(data_root, sqlite_uri, capsys):
    cfg = load_config(None, small_overrides(data_root, **ITERS))
    client = tracking.MlflowClient(sqlite_uri)
    exp = tracking.get_or_create_experiment(client, "hardseg", sqlite_uri)
    finished = runs.open_run(client, exp, "done", keys.TRAIN, texts={"config.yaml": runs.config_text(cfg)})
    runs.close_run(client, finished, "FINISHED")
    killed = runs.open_run(client, exp, "killed", keys.TRAIN, texts={"config.yaml": runs.config_text(cfg)})
    before = {r.info.run_id: r.info.status for r in client.search_runs([exp])}
    capsys.readouterr()  # the store's creation logs
    cases = [(["--resume", "0" * 32], "no such run"), (["--resume", finished], "FINISHED already"),
             (["--resume", killed, "--set", "model.width=32"], "changed model architecture: model.width is 32")]
    for args, needle in cases:
        assert cli(["train", *args, "--tracking-uri", sqlite_uri]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --resume") and needle in err[0], err
    assert {r.info.run_id: r.info.status for r in client.search_runs([exp])} == before


@pytest.mark.ray
@pytest.mark.slow
def test_train_killed_then_resumed_finishes_the_same_mlflow_run(ray_local, data_root, sqlite_uri, tmp_path):
    """The driver of a 2-worker DDP run is SIGKILLed at iteration 15 (after the checkpoint of 12);
    ``hardseg train --resume`` finishes that MLflow run with the uninterrupted run's metrics."""
    overrides = small_overrides(data_root, **ITERS, **{"ray.storage_path": str(tmp_path / "runs"),
                                                       "tracking.uri": sqlite_uri})
    reference = run_training(load_config(None, overrides))
    address = ray_local.get_runtime_context().gcs_address
    script = (
        "import functools, os, sys; import ray, ray.cloudpickle; import fault_session;"
        "from hardseg.config import load_config; from hardseg.platform.train_job import run_training;"
        "ray.init(address=sys.argv[1], logging_level='WARNING'); ray.cloudpickle.register_pickle_by_value(fault_session);"
        "run_training(load_config(None, sys.argv[2:]), train_loop=functools.partial("
        "fault_session.kill_driver_at, pid=os.getpid(), at=15))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", script, address, *overrides, f"ray.address={address}"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    client = MlflowClient(sqlite_uri)
    (killed,) = [r for r in client.search_runs([reference.experiment_id]) if r.info.status == "RUNNING"]
    run_id = killed.info.run_id
    assert cli(["train", "--resume", run_id, "--tracking-uri", sqlite_uri]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [r.info.status for r in client.search_runs([reference.experiment_id])] == ["FINISHED", "FINISHED"]
    _same(_final(run.data.metrics), _final(client.get_run(reference.run_id).data.metrics))
    print(f"val/miou uninterrupted {client.get_run(reference.run_id).data.metrics['val/miou']!r} "
          f"killed at 15 and resumed {run.data.metrics['val/miou']!r}")
    assert [m.step for m in client.get_metric_history(run_id, "val/miou")] == [6, 12, 18, 24]
    assert [m.step for m in client.get_metric_history(run_id, "iter/loss")] == list(range(3, 25, 3))
    assert run.data.tags.get(keys.RESUMED)

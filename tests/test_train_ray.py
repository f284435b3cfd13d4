"""End-to-end training on real Ray Train workers (DDP on gloo) with real MLflow stores."""

from __future__ import annotations

import math
import re

import pytest
import ray.cloudpickle
from mlflow.tracking import MlflowClient

from hardseg.config import load_config
from hardseg.platform.cli import main as cli
from hardseg.platform.train_job import run_training
from hardseg.trainables.local import run_local

import fault_session
from conftest import small_overrides
from test_strategies_ray import untrained_miou

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _runs(uri: str):
    client = MlflowClient(uri)
    exps = client.search_experiments()
    return client, [r for e in exps for r in client.search_runs([e.experiment_id])]


TIMING = ("images_per_s", "step_time_s", "epoch_time_s", "first_step_unix", "wall_time_s")


def test_train_logs_one_finished_run_and_the_same_seed_reproduces_it_on_an_mlflow_server(
        ray_local, data_root, sqlite_uri, mlflow_server, tmp_path, capsys):
    """``hardseg train`` with 2 DDP workers logs one FINISHED run to a SQLite store; the same config trained
    again logs to a real ``mlflow server`` with identical metrics. A DataLoader worker process per training
    worker prepares the augmented batches."""
    overrides = small_overrides(data_root, **{"ray.storage_path": str(tmp_path / "runs"), "train.epochs": 3,
                                              "seed": 7, "data.loader_workers": 1})
    rc = cli(["train", *sum((["--set", o] for o in overrides), []), "--tracking-uri", sqlite_uri])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "val mIoU" in out and "img/s" in out
    client, runs = _runs(sqlite_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["ray.num_workers"] == "2"
    assert run.data.params["strategies"] == "['ce']"
    history = client.get_metric_history(run.info.run_id, "val/miou")
    assert [m.step for m in history] == [1, 2, 3]
    for key in ("train/loss", "train/images_per_s", "val/band_iou", "val/small_iou", "val/small_recall",
                "val/thin_iou", "fog-3/miou", "val/pixel_acc"):
        assert key in run.data.metrics, key
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model"} <= arts
    model_arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model_export.pt", "model/config.yaml"} <= model_arts
    # The trained model beats the untrained one even after 3 short epochs.
    cfg = load_config(None, small_overrides(data_root))
    assert run.data.metrics["val/miou"] > untrained_miou(cfg) + 0.05

    # The same seed again, to the server: every metric identical.
    b = run_training(load_config(None, overrides + [f"tracking.uri={mlflow_server}"]))
    server = MlflowClient(mlflow_server)
    rerun = server.get_run(b.run_id)
    assert rerun.info.status == "FINISHED"
    assert [m.step for m in server.get_metric_history(b.run_id, "val/miou")] == [1, 2, 3]
    assert "model" in {x.path for x in server.list_artifacts(b.run_id)}
    first, again = run.data.metrics, rerun.data.metrics
    keys = [k for k in first if not any(t in k for t in TIMING)]
    assert len(keys) > 20 and set(keys) <= set(again)
    for k in keys:
        va, vb = first[k], again[k]
        assert va == vb or (math.isnan(va) and math.isnan(vb)), (k, va, vb)


def test_two_ddp_workers_match_one_worker_with_doubled_batch(ray_local, data_root, tmp_path):
    common = dict(**{"train.shuffle": "false", "data.augment.enabled": "false", "model.norm": "group",
                     "train.epochs": 2, "train.optimizer": "sgd", "train.lr": 0.05, "data.eval_domains": "[]",
                     "train.log_images_every": 0})
    ddp = load_config(None, small_overrides(data_root, **common, **{"train.batch_size": 4, "ray.num_workers": 2,
                                                                      "ray.storage_path": str(tmp_path / "r")}))
    single = load_config(None, small_overrides(data_root, **common, **{"train.batch_size": 8, "train.num_threads": 2}))
    out = run_training(ddp.model_copy(update={"tracking": ddp.tracking.model_copy(
        update={"uri": f"sqlite:///{tmp_path / 'm.db'}"})}))
    hist = run_local(single)
    ref = hist[-1]
    for key in ("train/loss", "val/miou", "val/pixel_acc"):
        assert math.isclose(out.metrics[key], ref[key], rel_tol=2e-3, abs_tol=2e-4), (key, out.metrics[key], ref[key])


def test_killed_worker_resumes_from_checkpoint(ray_local, data_root, sqlite_uri, tmp_path, capfd):
    """Rank 1 SIGKILLs itself at the start of epoch 3 (tests/fault_session.py); Ray restarts the group,
    which resumes after epoch 2."""
    cfg = load_config(None, small_overrides(data_root, **{
        "train.epochs": 4, "ray.max_failures": 1,
        "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": sqlite_uri, "data.eval_domains": "[]"}))
    ray.cloudpickle.register_pickle_by_value(fault_session)  # the workers cannot import tests/
    out = run_training(cfg, train_loop=fault_session.kill_rank_1_at_epoch_3)
    assert out.metrics["epoch"] == 4
    logs = capfd.readouterr()
    text = logs.out + logs.err
    assert "fault injection: rank 1 kills itself at epoch 3" in text
    # The restarted group resumes from a checkpoint, not from scratch: normally the
    # epoch-2 one; epoch 1 if the controller had not collected epoch 2's report.
    resumed = re.findall(r"rank 0: resuming after epoch (\d+)", text)
    assert resumed and int(resumed[0]) in (1, 2), text[-3000:]
    client = MlflowClient(sqlite_uri)
    steps = [m.step for m in client.get_metric_history(out.run_id, "train/loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4] and steps[-2:] == [3, 4]
    assert client.get_run(out.run_id).info.status == "FINISHED"


def test_nan_loss_fails_the_run_with_reason_and_exit_2(ray_local, data_root, sqlite_uri, tmp_path, capsys):
    args = ["train"]
    for o in small_overrides(data_root, **{"train.lr": "1e12", "train.optimizer": "sgd", "train.epochs": 3,
                                           "ray.storage_path": str(tmp_path / "runs"), "data.eval_domains": "[]"}):
        args += ["--set", o]
    rc = cli(args + ["--tracking-uri", sqlite_uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and "non-finite loss" in err[-1] and "train.lr" in err[-1]
    client, runs = _runs(sqlite_uri)
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "non-finite loss" in runs[0].data.tags["hardseg.error"]

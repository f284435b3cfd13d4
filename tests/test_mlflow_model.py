"""Runs' models in MLflow's format: load_model reproduces best/val/miou, hardseg evaluate takes runs:/ URIs,
--register puts them in the model registry."""

from __future__ import annotations

import os

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from hardseg.config import load_config
from hardseg.models.export import ExportedModel
from hardseg.platform.cli import main as cli
from hardseg.platform.export import load_logged_model, register
from hardseg.platform.runs import log_checkpoint_artifacts as log_final_artifacts
from hardseg.trainables.evaluation import evaluate_domains
from hardseg.trainables.local import run_local

from conftest import small_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_logged_model_reproduces_best_val_miou_and_is_evaluated_by_uri(data_root, sqlite_uri, tmp_path, capsys,
                                                                      monkeypatch, request):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cfg = load_config(None, small_overrides(data_root, **{
        "model.name": "smp:FPN", "model.encoder": "resnet18", "strategies": "[coarse_to_fine]",
        "data.eval_domains": "[]", "train.log_images_every": 0, "tracking.log_model": "true", "train.epochs": 1}))
    hist = run_local(cfg, tmp_path / "out")
    best = hist[-1]["best/val/miou"]

    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    log_final_artifacts(client, run_id, tmp_path / "out" / "checkpoint_latest",
                        yaml.safe_dump(cfg.model_dump(mode="json")), 1.0)
    assert {"model/MLmodel", "model/model_export.pt", "model/config.yaml"} <= {
        a.path for a in client.list_artifacts(run_id, "model")}

    # the store runs:/ and models:/ URIs are read from; unset after the test (MLflow also writes it to os.environ)
    mlflow.set_tracking_uri(sqlite_uri)
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert isinstance(model, ExportedModel)
    meta = mlflow.models.get_model_info(f"runs:/{run_id}/model").metadata
    assert meta["architecture"] == "smp:FPN" and meta["encoder"] == "resnet18" and meta["num_classes"] == 7
    assert meta["class_names"][0] == "background" and len(meta["palette"]) == 7
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406] and meta["best_epoch"] == hist[-1]["best/epoch"]
    logits = model(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 7, 64, 64)  # any input size: pickled, not traced
    miou = evaluate_domains(model, cfg, ["val"])["val/miou"]
    assert abs(miou - best) <= 1e-6, (miou, best)

    # hardseg evaluate rebuilds everything from the logged model (no classes.yaml, no model_export.pt path)
    model2, cfg2 = load_logged_model(f"runs:/{run_id}/model", sqlite_uri)
    assert cfg2.model.name == "smp:FPN" and cfg2.strategies == ["coarse_to_fine"]
    capsys.readouterr()
    assert cli(["evaluate", f"runs:/{run_id}/model", "--domains", "val", "--tracking-uri", sqlite_uri]) == 0
    assert f"{best:7.4f}" in capsys.readouterr().out

    # model.init_from: runs:/<id>/model is fetched on the driver (its model_export.pt) and warm-starts the model
    from hardseg.platform.prepare import resolve_paths
    from hardseg.trainables.evaluation import load_inference_model

    warm = cfg.model_copy(deep=True)
    warm.model.init_from, warm.tracking.uri, warm.ray.storage_path = f"runs:/{run_id}/model", sqlite_uri, str(
        tmp_path / "storage")
    warm = resolve_paths(warm)
    assert warm.model.init_from.endswith("model_export.pt") and str(tmp_path / "storage") in warm.model.init_from
    from hardseg.data import dataset_info
    from hardseg.strategies.build import build_training_model

    info = dataset_info(warm.data)
    tm = build_training_model(warm, info, torch.ones(info.num_classes).numpy())[0]
    best_model = load_inference_model(tmp_path / "out" / "checkpoint_latest" / "model_export.pt")[0]
    for k, v in best_model.state_dict().items():
        torch.testing.assert_close(tm.export().state_dict()[k], v, rtol=0, atol=0)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # a caller's own store, kept by register
    uri = register(run_id, "hardseg-test-model", sqlite_uri)
    assert uri == "models:/hardseg-test-model/1"
    # registering leaves MLflow's global URI (and the environment it writes) as they were
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(sqlite_uri)
    assert isinstance(mlflow.pytorch.load_model(uri), ExportedModel)
    assert cli(["evaluate", "runs:/0123456789abcdef/model", "--tracking-uri", sqlite_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # after the registry's own two lines
    assert err[-1].startswith("error: cannot load the MLflow model runs:/0123456789abcdef")

"""Cross-domain evaluation of a trained model: ``hardseg evaluate`` on the benchmark's shifts."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from hardseg.config import load_config
from hardseg.platform.cli import main as cli
from hardseg.trainables.evaluate import evaluate_domains, load_inference_model
from hardseg.trainables.local import run_local
from hardseg.robustness import robustness

from conftest import small_overrides


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("trained")
    cfg = load_config(None, small_overrides(data_root, **{"ray.num_workers": 1, "strategies": "[hl,coarse_to_fine]",
                                                          "data.eval_domains": "[fog-3]"}))
    history = run_local(cfg, out)
    return out / "checkpoint_latest", history[-1]


def test_exported_model_reproduces_the_training_runs_evaluation(trained):
    """model_export.pt is the best epoch's model (domains were evaluated on it); checkpoint.pt the last epoch's."""
    ckpt, last = trained
    model, cfg = load_inference_model(ckpt / "model_export.pt")
    got = evaluate_domains(model, cfg, ["val", "fog-3"])
    for key in ("val/miou", "val/band_iou"):
        assert got[key] == pytest.approx(last[f"best/{key}"], abs=1e-6), key
    for key in ("fog-3/miou", "fog-3/thin_iou"):
        assert got[key] == pytest.approx(last[key], abs=1e-6), key
    model, cfg = load_inference_model(ckpt / "checkpoint.pt")
    got = evaluate_domains(model, cfg, ["val"])
    for key in ("val/miou", "val/band_iou"):
        assert got[key] == pytest.approx(last[key], abs=1e-6), key
    assert sum(p.numel() for p in model.parameters()) > 0 and not model.training


def test_evaluate_cli_logs_domains_and_robustness(trained, tmp_path, capsys):
    ckpt, _ = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    rc = cli(["evaluate", str(ckpt / "model_export.pt"), "--domains", "val", "fog-1", "fog-3", "night-3",
              "--run-id", run_id, "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert rc == 0 and "fog-3" in out and "robustness/fog/miou" in out
    m = client.get_run(run_id).data.metrics
    assert {"val/miou", "fog-1/miou", "fog-3/miou", "night-3/miou", "robustness/fog/miou"} <= set(m)
    assert m["robustness/fog/miou"] == pytest.approx((m["fog-1/miou"] + m["fog-3/miou"]) / 2 / m["val/miou"])
    assert m["robustness/night/miou"] == pytest.approx(m["night-3/miou"] / m["val/miou"])


def test_robustness_groups_severities_by_family():
    r = robustness({"val/miou": 0.8, "fog-1/miou": 0.8, "fog-2/miou": 0.4, "target/miou": 0.1, "fog-2/band_iou": 0.2})
    assert r == {"robustness/fog/miou": pytest.approx(0.75)}


def test_bad_checkpoint_and_domain_exit_2(trained, tmp_path, capsys):
    ckpt, _ = trained
    assert cli(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    torch.save({"x": 1}, tmp_path / "other.pt")
    assert cli(["evaluate", str(tmp_path / "other.pt")]) == 2
    assert "not a hardseg checkpoint" in capsys.readouterr().err
    assert cli(["evaluate", str(ckpt / "model_export.pt"), "--domains", "fog-9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fog-9" in err[0]

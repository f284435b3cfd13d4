"""Cross-domain evaluation of the best epoch's model: best-epoch tracking, domain specs and names,
robustness by hand, and a real run whose last epoch is worse than an earlier one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from hardseg.config import load_config
from hardseg.data import build_dataset
from hardseg.data.domains import absolute_spec, parse_domain, parse_domains
from hardseg.data.folder import describe
from hardseg.errors import DataError
from hardseg.platform.cli import main as cli
from hardseg.trainables.best import BestModel
from hardseg.trainables.evaluation import evaluate_domains, load_inference_model
from hardseg.trainables.local import LocalSession, run_local
from hardseg.trainables.loop import fit
from hardseg.robustness import relative_robustness, robustness, shift_family

from conftest import small_overrides
from test_data_formats import _png


# --- best-epoch tracking ---------------------------------------------------------
def test_best_model_keeps_the_first_best_epoch_and_a_copy_of_its_weights():
    net = nn.Linear(2, 2)
    best = BestModel()
    assert best.epoch == 0 and best.metrics() == {"best/epoch": 0}
    nn.init.constant_(net.weight, 1.0)
    assert best.update(1, {"miou": 0.5, "band_iou": 0.2}, net)
    nn.init.constant_(net.weight, 2.0)  # training goes on: the kept weights must not follow
    assert not best.update(2, {"miou": 0.5}, net)  # a tie keeps the earlier epoch
    assert not best.update(3, {"miou": math.nan}, net)
    assert not best.update(4, {"miou": 0.4}, net)
    assert best.epoch == 1 and best.metrics() == {"best/epoch": 1, "best/val/miou": 0.5, "best/val/band_iou": 0.2}
    kept = best.model(net)
    assert torch.equal(kept.weight, torch.ones(2, 2)) and torch.equal(net.weight, torch.full((2, 2), 2.0))
    resumed = BestModel()
    resumed.load_state_dict(best.state_dict())
    assert not resumed.update(5, {"miou": 0.45}, net) and resumed.update(6, {"miou": 0.51}, net)
    assert resumed.epoch == 6 and torch.equal(resumed.weights["weight"], torch.full((2, 2), 2.0))


# --- robustness and domain names --------------------------------------------------
def test_robustness_by_hand():
    m = {"val/miou": 0.8, "fog-1/miou": 0.6, "fog-3/miou": 0.2, "night-2/miou": 0.4, "target/miou": 0.1,
         "fog-1/band_iou": 0.3, "best/val/miou": 0.5, "foggy_city-2/miou": 0.72}
    # fog: (0.6/0.8 + 0.2/0.8) / 2 = 0.5; night: 0.4/0.8 = 0.5; foggy_city: 0.72/0.8 = 0.9; target: no severity
    assert robustness(m) == pytest.approx({"robustness/fog/miou": 0.5, "robustness/night/miou": 0.5,
                                           "robustness/foggy_city/miou": 0.9})
    assert robustness(m, "band_iou", clean=0.6) == pytest.approx({"robustness/fog/band_iou": 0.5})
    assert robustness({"fog-1/miou": 0.5}) == {} and robustness(m, clean=0.0) == {}
    assert robustness({"val/miou": 0.5, "fog-1/miou": math.nan, "night-1/miou": 0.25}) == {"robustness/night/miou": 0.5}
    assert shift_family("fog-3") == ("fog", 3) and shift_family("target") is None and shift_family("val") is None
    assert relative_robustness(0.8, {1: 0.8, 2: 0.4}) == pytest.approx(0.75)


def test_domain_specs_and_names(tmp_path):
    assert parse_domain("fog-3").name == "fog-3" and parse_domain("fog-3").dataset is None
    d = parse_domain("folder:/data/foggy-2")
    assert (d.name, d.dataset, d.root, d.split) == ("foggy-2", "folder", "/data/foggy-2", "val")
    assert parse_domain("cityscapes:/data/night_city:test").name == "night_city_test"
    assert parse_domain("dusk-1=folder:/x/y:train").name == "dusk-1"
    assert absolute_spec("folder:rel/foggy-2", tmp_path) == f"foggy-2=folder:{tmp_path}/rel/foggy-2:val"
    for bad, needle in [("folder:", "give a path"), ("zip:/a", "unknown kind 'zip'"),
                        ("folder:/data/val", "cannot name metrics"), ("best=fog-1", "cannot name metrics"),
                        ("a b", "cannot name metrics")]:
        with pytest.raises(DataError, match=needle):
            parse_domain(bad)
    with pytest.raises(DataError, match="both named 'x'"):
        parse_domains(["folder:/a/x", "cityscapes:/b/x"])


# --- a real run: the best epoch, its export, and a folder-format domain ---------
def export_split_as_folder(data_root: Path, split: str, dest: Path) -> Path:
    """One synthetic split written in the folder format (PNG, lossless): the same pixels, another reader."""
    import yaml

    cfg = load_config(None, small_overrides(data_root)).data
    ds = build_dataset(cfg, split, train=False)
    dest.mkdir(parents=True)
    (dest / "classes.yaml").write_text(yaml.safe_dump(describe(ds.info)))
    for i in range(len(ds)):
        image, mask = ds.raw(i)
        _png(dest / "images" / "val" / f"{i:03d}.png", image)
        _png(dest / "masks" / "val" / f"{i:03d}.png", mask)
    return dest


class SpikeSession(LocalSession):
    """Resumes the checkpoint with a 1000× learning rate: the resumed epoch wrecks the model."""

    def load_checkpoint(self):
        state = super().load_checkpoint()
        state["scheduler"]["base_lrs"] = [lr * 1000 for lr in state["scheduler"]["base_lrs"]]
        for group in state["optimizer"]["param_groups"]:
            group["lr"] *= 1000
        return state


@pytest.fixture(scope="module")
def spiked(data_root, tmp_path_factory, one_torch_thread):
    tmp = tmp_path_factory.mktemp("spiked")
    foggy = export_split_as_folder(data_root, "fog-3", tmp / "foggy-3")
    base = {"ray.num_workers": 1, "train.epochs": 3, "data.eval_domains": "[fog-3]"}
    run_local(load_config(None, small_overrides(data_root, **base)), tmp / "out")
    cfg = load_config(None, small_overrides(data_root, **{**base, "train.epochs": 4,
                                                          "data.eval_domains": f"[fog-1,fog-3,folder:{foggy}]"}))
    session = SpikeSession(tmp / "out", "cpu")
    fit(cfg, session)
    return tmp, foggy, session.history


def test_domains_are_evaluated_on_the_best_epochs_model(spiked):
    tmp, foggy, history = spiked
    (last,) = history  # epoch 4 only: epochs 1-3 came from the checkpoint, their best with them
    assert last["epoch"] == 4 and last["best/epoch"] <= 3
    assert last["val/miou"] < last["best/val/miou"] - 0.05, "the spike should make the last epoch clearly worse"
    model, cfg = load_inference_model(tmp / "out" / "checkpoint_latest" / "model_export.pt")
    got = evaluate_domains(model, cfg, ["val", "fog-1", "fog-3"])
    assert got["val/miou"] == pytest.approx(last["best/val/miou"], abs=1e-9)
    for key in ("fog-1/miou", "fog-3/miou", "fog-3/band_iou", "fog-3/small_iou", "fog-3/thin_iou", "fog-3/iou/thin"):
        assert got[key] == pytest.approx(last[key], abs=1e-9, nan_ok=True), key
    # the folder copy of fog-3 holds the same pixels: the same numbers, under the folder's name
    for key in ("miou", "band_iou", "thin_iou", "iou/thin"):
        assert last[f"foggy-3/{key}"] == pytest.approx(last[f"fog-3/{key}"], abs=1e-12, nan_ok=True), key
    # robustness/<family>/miou = mean over severities of shifted / clean (the best model's val)
    clean = last["best/val/miou"]
    assert last["robustness/fog/miou"] == pytest.approx((last["fog-1/miou"] + last["fog-3/miou"]) / 2 / clean)
    assert last["robustness/foggy/miou"] == pytest.approx(last["foggy-3/miou"] / clean)


def test_evaluate_cli_reads_a_folder_domain(spiked, capsys):
    tmp, foggy, history = spiked
    export = tmp / "out" / "checkpoint_latest" / "model_export.pt"
    assert cli(["evaluate", str(export), "--domains", "val", f"folder:{foggy}", f"copy=folder:{foggy}:val"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()}
    assert rows["foggy-3"] == rows["copy"] == f"{history[-1]['foggy-3/miou']:7.4f}".strip()
    assert "robustness/foggy/miou" in out
    assert cli(["evaluate", str(export), "--domains", f"folder:{tmp / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]


def test_train_rejects_a_domain_of_another_label_space(capsys, data_root, tmp_path, sqlite_uri):
    """``hardseg train`` checks path domains before any MLflow run: classes, then files."""
    from test_cli_errors import _no_runs
    from test_data_formats import _folder

    toy = _folder(tmp_path / "toy")  # 4 classes; the synthetic model has 7
    args = ["train", "--tracking-uri", sqlite_uri]
    for o in small_overrides(data_root, **{"data.eval_domains": f"[fog-3,folder:{toy}]"}):
        args += ["--set", o]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 4 classes" in err[0] and str(toy) in err[0]
    assert _no_runs(sqlite_uri)

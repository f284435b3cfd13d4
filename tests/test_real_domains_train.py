"""Training from the fixture trees of the real formats and evaluating on their shifted domains:
GTA5 -> Cityscapes / ACDC / Foggy Cityscapes / corrupted val as one ``hardseg train`` on Ray (with a held-out
test split and dataset lineage in MLflow), and every other format for one epoch in a plain process."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

import fixture_trees as ft
from hardseg.config import load_config
from hardseg.platform.cli import main as cli
from hardseg.trainables.local import run_local

TINY = {"train.epochs": 1, "train.batch_size": 2, "model.width": 8, "train.log_images_every": 0,
        "data.augment.enabled": "false", "train.num_threads": 1}


def _sets(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in ("--set", f"{k}={v}")]


@pytest.mark.ray
@pytest.mark.slow
def test_gta5_to_cityscapes_acdc_foggy_and_corruptions_in_one_train(ray_local, tmp_path, sqlite_uri, capsys):
    gta = ft.gta5(tmp_path / "gta5", n=12, split_mat=True)
    city = ft.foggy(tmp_path / "cityscapes")  # Cityscapes val + its foggy copy at three betas
    acdc = ft.acdc(tmp_path / "acdc", conditions=("night", "fog"), splits=("val",))
    domains = f"[cityscapes:{city}, acdc:{acdc}:night, acdc:{acdc}:fog, foggy_cityscapes:{city}, corrupt:fog-3, corrupt:gaussian_noise-1]"
    rc = cli(["train", *_sets({**TINY, "data.dataset": "gta5", "data.root": gta, "data.test_split": "test",
                               "data.eval_domains": domains, "ray.num_workers": 1,
                               "ray.storage_path": tmp_path / "runs"}), "--tracking-uri", sqlite_uri])
    assert rc == 0
    assert "cityscapes/miou" in capsys.readouterr().out
    client = MlflowClient(sqlite_uri)
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["hardseg.test_split"] == "test"
    for name in ("cityscapes", "acdc_night", "acdc_fog", "foggy-1", "foggy-2", "foggy-3", "corrupt.fog-3",
                 "corrupt.gaussian_noise-1", "test", "best/val"):
        assert math.isfinite(m[f"{name}/miou"]), name
    assert "robustness/foggy/miou" in m and "robustness/mPC/miou" in m and "robustness/rPC/miou" in m
    # lineage: one dataset input per split and domain, with digests of files + labels
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {"gta5:train", "gta5:val", "gta5:test", "cityscapes", "acdc_night", "foggy-3", "corrupt.fog-3"} <= set(inputs)
    ctx = {n: next(t.value for t in d.tags if t.key == "mlflow.data.context") for n, d in inputs.items()}
    assert (ctx["gta5:train"], ctx["gta5:val"], ctx["gta5:test"], ctx["cityscapes"]) == (
        "training", "validation", "test", "evaluation")
    profile = json.loads(inputs["gta5:train"].dataset.profile)
    assert profile["images"] == 8 and sum(profile["class_pixels"]) > 0
    assert len({inputs[n].dataset.digest for n in ("gta5:val", "corrupt.fog-3", "corrupt.gaussian_noise-1")}) == 3


def test_lineage_tells_copies_apart(tmp_path):
    from hardseg.config import DataConfig
    from hardseg.data import build_source
    from hardseg.data.lineage import lineage

    def digest(root):
        src = build_source(DataConfig(dataset="cityscapes", root=str(root)), "val")
        src.validate()
        return lineage(src, "cityscapes:val", "validation", "cityscapes", root).digest

    a, b = ft.cityscapes(tmp_path / "a"), ft.cityscapes(tmp_path / "b")
    assert digest(a) == digest(b)  # the same files under another root: the same dataset
    ft.png(next((b / "gtFine" / "val").rglob("*labelIds.png")), ft.stripes([7, 8]))
    assert digest(a) != digest(b)  # one relabelled mask: another dataset


def _city_with_shifts(p):
    root = ft.foggy(p / "cityscapes")  # val + Foggy Cityscapes
    ft.cityscapes(root, splits=("train",))
    return root


@pytest.mark.parametrize("fmt", ["ade20k", "voc", "cityscapes", "acdc"])
def test_each_format_trains_one_epoch_and_is_evaluated_as_a_domain(tmp_path, fmt):
    root = {"ade20k": lambda p: ft.ade20k(p / "ADEChallengeData2016"),
            "voc": lambda p: ft.voc(p / "VOC2012", n=4),
            "cityscapes": _city_with_shifts,
            "acdc": lambda p: ft.acdc(p / "acdc")}[fmt](tmp_path)
    acdc = ft.acdc(tmp_path / "acdc_eval", conditions=("night", "fog"), splits=("val",))
    domains = {"ade20k": [f"ade20k:{root}"], "voc": [f"voc:{root}:val"],
               "cityscapes": [f"acdc:{acdc}:night", f"acdc:{acdc}:fog", f"foggy_cityscapes:{root}",
                              f"dark_zurich:{ft.dark_zurich(tmp_path / 'dz')}"],
               "acdc": [f"acdc:{root}:night"]}[fmt]
    cfg = load_config(None, [f"{k}={v}" for k, v in {**TINY, "data.dataset": fmt, "data.root": root,
                                                       "data.eval_domains": f"[{', '.join(domains)}, corrupt:contrast-2]"}.items()])
    last = run_local(cfg, device="cpu")[-1]
    names = {"ade20k": ["ade20k"], "voc": ["voc"], "acdc": ["acdc_night"],
             "cityscapes": ["acdc_night", "acdc_fog", "foggy-1", "foggy-2", "foggy-3", "dark_zurich"]}[fmt]
    for name in names + ["corrupt.contrast-2"]:
        assert math.isfinite(last[f"{name}/miou"]), name

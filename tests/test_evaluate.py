"""Cross-domain evaluation of a trained model: ``hardseg evaluate`` on the benchmark's shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from hardseg.config import TTAConfig, load_config
from hardseg.platform.cli import main as cli
from hardseg.trainables.evaluation import evaluate_domains, load_inference_model
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


# -- the reference's evaluation: mAcc / aAcc, test-time augmentation ---------------------------------------
def _mmseg_total_area_to_metrics(preds, labels, num_classes, ignore_index=255):
    """mmseg 0.22.1's intersect_and_union + total_area_to_metrics (mmseg/core/evaluation/metrics.py), numpy."""
    ti = tu = tp = tl = np.zeros(num_classes)
    for pred, label in zip(preds, labels):
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        intersect = pred[pred == label]
        area_i = np.histogram(intersect, bins=num_classes, range=(0, num_classes - 1))[0]
        area_p = np.histogram(pred, bins=num_classes, range=(0, num_classes - 1))[0]
        area_l = np.histogram(label, bins=num_classes, range=(0, num_classes - 1))[0]
        ti, tp, tl = ti + area_i, tp + area_p, tl + area_l
        tu = tu + area_p + area_l - area_i
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"aAcc": ti.sum() / tl.sum(), "IoU": ti / tu, "Acc": ti / tl}


def test_macc_aacc_and_per_class_accuracy_equal_mmsegs():
    from hardseg.trainables.metrics import SegMetrics

    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(6)]
    labels = [rng.integers(0, 5, (9, 13)) for _ in range(3)]  # class 5 never occurs: NaN Acc, left out of mAcc
    for lab in labels:
        lab[rng.random(lab.shape) < 0.1] = 255
    preds = [np.where(rng.random(lab.shape) < 0.3, rng.integers(0, 6, lab.shape), np.where(lab == 255, 0, lab))
             for lab in labels]
    m = SegMetrics(6, names)
    for p, lab in zip(preds, labels):
        m.update(torch.from_numpy(lab)[None], torch.from_numpy(p)[None])
    got, ref = m.compute(), _mmseg_total_area_to_metrics(preds, labels, 6)
    assert got["pixel_acc"] == pytest.approx(ref["aAcc"], rel=1e-12)
    assert got["macc"] == pytest.approx(np.nanmean(ref["Acc"]), rel=1e-12)
    assert got["miou"] == pytest.approx(np.nanmean(ref["IoU"]), rel=1e-12)
    for c, name in enumerate(names):
        assert got[f"acc/{name}"] == pytest.approx(ref["Acc"][c], rel=1e-12, nan_ok=True)
        assert got[f"iou/{name}"] == pytest.approx(ref["IoU"][c], rel=1e-12, nan_ok=True)
    assert np.isnan(got["acc/c5"]) and not np.isnan(got["iou/c5"])  # predicted but absent: IoU 0, as mmseg


def _val_batch(cfg, n=4):
    from hardseg.data import build_dataset

    ds = build_dataset(cfg.data, "val", train=False)
    return torch.stack([ds[i][0] for i in range(n)])


def test_tta_single_scale_no_flip_is_whole_image_inference_bitwise(trained):
    from hardseg.trainables.evaluation import inference_scores
    from hardseg.trainables.settings import StepSettings

    model, cfg = load_inference_model(trained[0] / "model_export.pt")
    images = _val_batch(cfg)
    whole = inference_scores(model, images, StepSettings(torch.device("cpu")))
    tta = inference_scores(model, images, StepSettings(torch.device("cpu"), tta=((1.0,), False, None)))
    assert torch.equal(tta, whole.float().softmax(1))
    assert torch.equal(tta.max(1).indices, whole.max(1).indices)


def test_tta_flip_is_the_mean_of_the_two_passes_and_scales_resize_back(trained):
    import torch.nn.functional as F

    from hardseg.trainables.evaluation import inference_scores
    from hardseg.trainables.settings import StepSettings

    model, cfg = load_inference_model(trained[0] / "model_export.pt")
    images = _val_batch(cfg)
    cpu = torch.device("cpu")
    with torch.no_grad():
        plain = inference_scores(model, images, StepSettings(cpu)).softmax(1)
        flipped = inference_scores(model, images.flip(-1), StepSettings(cpu)).softmax(1).flip(-1)
    got = inference_scores(model, images, StepSettings(cpu, tta=((1.0,), True, None)))
    assert torch.equal(got, (plain + flipped) / 2)
    assert not torch.equal(got, plain)  # the flip changed something
    h, w = images.shape[-2:]
    with torch.no_grad():
        small = F.interpolate(images, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        half = F.interpolate(inference_scores(model, small, StepSettings(cpu)), size=(h, w), mode="bilinear",
                             align_corners=False).softmax(1)
    got = inference_scores(model, images, StepSettings(cpu, tta=((0.5, 1.0), False, None)))
    assert torch.allclose(got, (half + plain) / 2, atol=1e-6) and got.shape == plain.shape


def test_evaluate_with_tta_and_slide(trained):
    model, cfg = load_inference_model(trained[0] / "model_export.pt")
    base = evaluate_domains(model, cfg, ["val"])
    cfg.eval.tta = TTAConfig(scales=[0.75, 1.0, 1.25], flip=True)
    cfg.eval.mode, cfg.eval.crop, cfg.eval.stride = "slide", (48, 48), (32, 32)
    got = evaluate_domains(model, cfg, ["val"])
    assert {"val/miou", "val/macc", "val/pixel_acc"} <= set(got) and got["val/miou"] != base["val/miou"]
    print(f"val mIoU {base['val/miou']:.4f} whole -> {got['val/miou']:.4f} with slide 48/32 + TTA 0.75-1.25 + flip")


@pytest.mark.parametrize("scales", ["[0]", "[1.0,-0.5]"])
def test_tta_scales_not_positive_is_one_line_exit_2(capsys, unopened_sqlite_uri, scales):
    from pathlib import Path

    rc = cli(["train", "--set", f"eval.tta.scales={scales}", "--tracking-uri", unopened_sqlite_uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "eval.tta.scales" in err[0], err
    assert not Path(unopened_sqlite_uri[len("sqlite:///"):]).exists()  # no MLflow store, so no run


def test_report_accuracy_section_lists_aacc_miou_macc_and_per_class():
    import pandas as pd

    from hardseg.reports.tables import accuracy_section

    rows = []
    for strategy, base in (("ce", 0.5), ("hl", 0.6)):
        for seed in (0, 1):
            rows.append({"run_id": f"{strategy}{seed}", "strategies": strategy, "status": "FINISHED", "seed": seed,
                         "val/miou": base + seed / 100, "val/macc": base + 0.1, "val/pixel_acc": 0.9,
                         "val/iou/road": base, "val/acc/road": base + 0.2})
    rows.append({"run_id": "x", "strategies": "hl", "status": "FAILED", "seed": 2, "val/miou": 0.0,
                 "val/macc": 0.0, "val/pixel_acc": 0.0, "val/iou/road": 0.0, "val/acc/road": 0.0})
    md = accuracy_section(pd.DataFrame(rows))
    assert "| strategy | seeds | aAcc | mIoU | mAcc |" in md
    assert "| ce | 2 | 0.900 ± 0.000 | 0.505 ± 0.064 | 0.600 ± 0.000 |" in md  # the FAILED run is left out
    assert "| road | 0.500 | 0.700 | 0.600 | 0.800 |" in md
    assert accuracy_section(pd.DataFrame(rows).drop(columns=["val/macc"])) == ""


def test_evaluate_cli_takes_tta_and_slide_options(trained, capsys):
    ckpt, _ = trained
    model, cfg = load_inference_model(ckpt / "model_export.pt")
    cfg.eval.tta = TTAConfig(scales=[0.75, 1.0], flip=True)
    cfg.eval.mode, cfg.eval.crop, cfg.eval.stride = "slide", (48, 48), (32, 32)
    want = evaluate_domains(model, cfg, ["val"])["val/miou"]
    assert cli(["evaluate", str(ckpt / "model_export.pt"), "--domains", "val", "--mode", "slide", "--crop", "48", "48",
                "--stride", "32", "32", "--tta-scales", "0.75", "1.0", "--tta-flip"]) == 0
    assert f"{want:7.4f}" in capsys.readouterr().out
    assert cli(["evaluate", str(ckpt / "model_export.pt"), "--tta-scales", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval.tta.scales" in err[0]


def test_a_run_with_the_reference_pipeline_and_tta(data_root, tmp_path, one_torch_thread):
    """Training on mmseg's pipeline (PhotoMetricDistortion, cat_max_ratio, pad after normalising) and
    evaluating with TTA + slide: the loop reports mmseg's metrics at every epoch."""
    cfg = load_config(None, small_overrides(data_root, **{
        "ray.num_workers": 1, "train.epochs": 1, "data.augment.pipeline": "mmseg", "data.augment.crop": "[24,24]",
        "data.augment.scale": "[0.5,2.0]", "data.augment.cat_max_ratio": 0.75, "data.augment.photometric": "true",
        "eval.mode": "slide", "eval.tta": "{scales: [0.75, 1.0], flip: true}"}))
    last = run_local(cfg, tmp_path)[-1]
    assert {"val/miou", "val/macc", "val/pixel_acc", "fog-3/macc"} <= set(last)
    acc = [k for k in last if k.startswith("val/acc/")]
    assert acc and len(acc) == len([k for k in last if k.startswith("val/iou/")])


@pytest.mark.parametrize("h, w, scale, img_scale", [
    (1024, 2048, 1.0, (2049, 1025)),  # mmseg's 769x769 Cityscapes test: images are run at 2049x1025
    (1024, 2048, 1.0, (1024, 512)),  # GTA -> Cityscapes: Cityscapes val at half size
    (1024, 2048, 1.75, (2048, 1024)), (1024, 2048, 0.5, None), (500, 375, 1.25, None), (37, 91, 0.75, (64, 32))])
def test_tta_sizes_are_mmsegs_multiscale_resize(h, w, scale, img_scale):
    """MultiScaleFlipAug(img_scale, img_ratios) + Resize(keep_ratio=True), re-written from mmseg/mmcv."""
    from hardseg.trainables.tta import scaled_size

    base = img_scale if img_scale is not None else (w, h)
    target = (int(base[0] * scale), int(base[1] * scale))
    factor = min(max(target) / max(h, w), min(target) / min(h, w))
    assert scaled_size(h, w, scale, img_scale) == (int(h * factor + 0.5), int(w * factor + 0.5))


def test_tta_img_scale_runs_at_that_size_and_answers_at_the_input_size(trained):
    from hardseg.trainables.evaluation import inference_scores
    from hardseg.trainables.settings import StepSettings

    model, cfg = load_inference_model(trained[0] / "model_export.pt")
    images = _val_batch(cfg)  # 32x32
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    out = inference_scores(model, images, StepSettings(torch.device("cpu"), tta=((1.0, 0.5), False, (33, 33))))
    assert seen == [(33, 33), (16, 16)] and out.shape[-2:] == images.shape[-2:]

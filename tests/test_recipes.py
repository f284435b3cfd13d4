"""The shipped recipes (``hardseg train recipe:NAME``): every value against a table transcribed from the
source config it names, the dry run's GPUs and lr curve, bad names, and a CPU smoke run of each at a tiny
crop for a few iterations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hardseg.config import ConfigError, load_config, recipe_names
from hardseg.platform.cli import main as cli
from hardseg.trainables.local import run_local
from hardseg.trainables.schedule import Schedule

from fixture_trees import cityscapes, gta5

# Transcribed by hand from the sources (the recipes' headers name them): the HL reference's
# logs/Focal_OHEM_HL/res50/hl.json (its embedded config), logs/cityscape_architecture/DeepLabV3P/ours.log.json
# (the R101 twin of mmseg's deeplabv3plus_r50-d8_769x769_40k_cityscapes: depth differs only) and
# configs/gta_hl/deeplab_gta2city_res101_hl.py. mmseg's keys on the left, hardseg's on the right.
CITYSCAPES_769 = {
    "optimizer type SGD": ("train.optimizer", "sgd"),
    "optimizer lr": ("train.lr", 0.01),
    "optimizer momentum": ("train.momentum", 0.9),
    "optimizer weight_decay": ("train.weight_decay", 0.0005),
    "lr_config power": ("train.poly_power", 0.9),
    "lr_config min_lr": ("train.min_lr", 0.0001),
    "lr_config warmup (none)": ("train.warmup_iters", 0),
    "runner max_iters": ("train.iters", 40000),
    "samples_per_gpu": ("train.batch_size", 2),
    "gpu_ids range(0, 4)": ("ray.num_workers", 4),
    "crop_size": ("data.augment.crop", (769, 769)),
    "Resize img_scale": ("data.augment.img_scale", (2049, 1025)),
    "Resize ratio_range": ("data.augment.scale", (0.5, 2.0)),
    "RandomCrop cat_max_ratio": ("data.augment.cat_max_ratio", 0.75),
    "RandomFlip prob 0.5": ("data.augment.hflip", True),
    "PhotoMetricDistortion": ("data.augment.photometric", True),
    "auxiliary_head loss_weight": ("model.aux_weight", 0.4),
    "auxiliary_head present": ("model.aux", True),
    "align_corners": ("model.align_corners", True),
    "norm_cfg SyncBN": ("model.sync_bn", True),
    "test_cfg mode": ("eval.mode", "slide"),
    "test_cfg crop_size": ("eval.crop", (769, 769)),
    "test_cfg stride": ("eval.stride", (513, 513)),
    "test MultiScaleFlipAug img_scale": ("eval.tta.img_scale", (2049, 1025)),
    "test flip": ("eval.tta.flip", False),
    "evaluation interval": ("train.eval_interval", 4000),
    "checkpoint_config interval": ("train.checkpoint_interval", 4000),
    "log_config interval": ("train.log_interval", 50),
    "fp32 (no fp16 config)": ("train.amp", "off"),
    "loss_decode CrossEntropyLoss (mean over all pixels)": ("loss.average", "all"),
    "pretrained open-mmlab://resnet*_v1c": ("model.pretrained", "imagenet"),
    "seed": ("seed", 0),
}
SOURCES = {
    "pspnet_r50_d8_769x769_40k_cityscapes": {**CITYSCAPES_769, "decode_head PSPHead, depth 50": ("model.name", "pspnet_r50_d8"),
                                             "dataset_type": ("data.dataset", "cityscapes")},
    "deeplabv3plus_r50_d8_769x769_40k_cityscapes": {
        **CITYSCAPES_769, "decode_head DepthwiseSeparableASPPHead, depth 50": ("model.name", "deeplabv3plus_r50_d8"),
        "dataset_type": ("data.dataset", "cityscapes")},
    "deeplabv3plus_r101_d8_512x512_40k_gta2cityscapes": {
        "train type GTADataset": ("data.dataset", "gta5"),
        "decode_head DepthwiseSeparableASPPHead, depth 101": ("model.name", "deeplabv3plus_r101_d8"),
        "optimizer type AdamW": ("train.optimizer", "adamw"),
        "optimizer lr": ("train.lr", 6e-05),
        "optimizer weight_decay": ("train.weight_decay", 0.01),
        "lr_config power": ("train.poly_power", 1.0),
        "lr_config min_lr": ("train.min_lr", 0.0),
        "lr_config warmup_iters": ("train.warmup_iters", 1500),
        "lr_config warmup_ratio": ("train.warmup_ratio", 1e-06),
        "runner max_iters": ("train.iters", 40000),
        "samples_per_gpu": ("train.batch_size", 2),
        "gpu_ids range(0, 4)": ("ray.num_workers", 4),
        "crop_size": ("data.augment.crop", (512, 512)),
        "Resize img_scale": ("data.augment.img_scale", (1280, 720)),
        "Resize (no ratio_range)": ("data.augment.scale", (1.0, 1.0)),
        "RandomCrop cat_max_ratio": ("data.augment.cat_max_ratio", 0.75),
        "RandomFlip prob 0.5": ("data.augment.hflip", True),
        "PhotoMetricDistortion": ("data.augment.photometric", True),
        "auxiliary_head loss_weight": ("model.aux_weight", 0.4),
        "auxiliary_head present": ("model.aux", True),
        "align_corners": ("model.align_corners", False),
        "norm_cfg SyncBN": ("model.sync_bn", True),
        "test_cfg mode": ("eval.mode", "whole"),
        "test MultiScaleFlipAug img_scale": ("eval.tta.img_scale", (1024, 512)),
        "test flip": ("eval.tta.flip", False),
        "val CityscapesDataset": ("data.eval_domains", ["cityscapes=cityscapes:data/cityscapes"]),
        "evaluation interval": ("train.eval_interval", 4000),
        "checkpoint_config interval": ("train.checkpoint_interval", 4000),
        "log_config interval": ("train.log_interval", 50),
        "fp32 (no fp16 config)": ("train.amp", "off"),
        "loss_decode CrossEntropyLoss (mean over all pixels)": ("loss.average", "all"),
        "pretrained open-mmlab://resnet101_v1c": ("model.pretrained", "imagenet"),
        "seed (none set: 0)": ("seed", 0),
    },
}


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return tuple(value) if isinstance(value, (tuple, list)) and dotted != "data.eval_domains" else value


def test_every_shipped_recipe_has_its_source_table():
    assert sorted(SOURCES) == recipe_names()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_recipe_values_equal_their_source(name):
    cfg = load_config(f"recipe:{name}")
    wrong = {source: (key, _get(cfg, key), want) for source, (key, want) in SOURCES[name].items()
             if _get(cfg, key) != want}
    assert not wrong, wrong
    assert cfg.name == name


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_recipe_dry_run_prints_the_gpus_and_the_lr_curve(name, capsys):
    argv = ["train", f"recipe:{name}", "--set", "strategies=[hl]", "--set", "model.pretrained=none", "--dry-run"]
    assert cli(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    cfg = load_config(f"recipe:{name}")
    t = cfg.train
    assert "[hardseg] expects 4 GPU(s): ray.num_workers=4 x ray.gpus_per_worker=1, 8 images per iteration" in out
    schedule = Schedule.from_config(t, 1)
    for it in (0, 20000, 40000):  # mmseg's poly (with its linear warm-up), as the dry run prints it
        decay = (t.lr - t.min_lr) * (1 - it / t.iters) ** t.poly_power + t.min_lr
        if it < t.warmup_iters:
            decay *= 1 - (1 - it / t.warmup_iters) * (1 - t.warmup_ratio)
        assert math.isclose(schedule.lr_at(it), decay, rel_tol=0, abs_tol=1e-12)
        assert f"{it}: {schedule.lr_at(it)!r}" in out or f"{it}: {schedule.lr_at(it)}" in out, out[-1500:]
    assert "evaluate after iteration " + ", ".join(str(4000 * k) for k in range(1, 11)) in out


def test_unknown_recipe_is_one_line_exit_2(capsys):
    assert cli(["train", "recipe:pspnet_r50_d8_nope", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: unknown recipe 'pspnet_r50_d8_nope'; shipped recipes:")
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_config("recipe:")


TINY = {  # the recipe at a tiny crop for a few iterations on CPU; nothing else changes
    "model.pretrained": "none", "model.sync_bn": "false", "ray.use_gpu": "false", "ray.num_workers": 1,
    "data.augment.crop": "[16,16]", "data.augment.img_scale": "[64,32]", "eval.tta.img_scale": "[64,32]",
    "train.iters": 3, "train.eval_interval": 3, "train.checkpoint_interval": 3, "train.log_interval": 1,
    "train.warmup_iters": 0, "tracking.log_model": "false", "train.log_images_every": 0,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_recipe_smoke_run_on_cpu_at_a_tiny_crop(name, tmp_path):
    extra = dict(TINY)
    if name.endswith("gta2cityscapes"):
        root = gta5(tmp_path / "gta5", n=12, split_mat=True)
        extra["data.eval_domains"] = f"[cityscapes=cityscapes:{cityscapes(tmp_path / 'cityscapes', splits=('val',))}]"
    else:
        root = cityscapes(tmp_path / "cityscapes", n=4)
        extra |= {"eval.crop": "[16,16]", "eval.stride": "[8,8]"}
    extra |= {"data.root": str(root), "strategies": "[hl]"}
    cfg = load_config(f"recipe:{name}", [f"{k}={v}" for k, v in extra.items()])
    history = run_local(cfg, tmp_path / "out", device="cpu")
    final = history[-1]
    assert final["iteration"] == 3 and np.isfinite(final["train/loss"]) and 0 <= final["val/miou"] <= 1, final
    if name.endswith("gta2cityscapes"):
        assert "cityscapes/miou" in final or any(k.startswith("cityscapes/") for k in final), sorted(final)

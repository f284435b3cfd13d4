"""ADE20K, VOC, GTA5, Foggy Cityscapes, ACDC, Dark Zurich and the folder format's new keys, read from
tiny trees in their distributed layouts; ignore conventions checked pixel by pixel; the registry."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import fixture_trees as ft
from conftest import fresh_registry, write_plugin_distribution
from hardseg.config import DataConfig, load_config
from hardseg.data import available_datasets, available_splits, build_source, dataset_info
from hardseg.data.cityscapes import ID_TO_TRAIN_ID
from hardseg.data.domains import absolute_spec, build_domain, parse_domain, parse_domains
from hardseg.errors import ConfigError, DataError


def _cfg(dataset: str, root: Path) -> DataConfig:
    return DataConfig(dataset=dataset, root=str(root))


def _raw(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_registry_names_and_config_lookup():
    assert {"synthetic", "cityscapes", "folder", "ade20k", "voc", "gta5", "foggy_cityscapes", "acdc",
            "dark_zurich"} <= set(available_datasets())
    assert load_config(None, ["data.dataset=gta5"]).data.dataset == "gta5"
    with pytest.raises(ConfigError, match=r"unknown dataset 'imagenet'.*allowed: acdc, ade20k.*'data.dataset'"):
        load_config(None, ["data.dataset=imagenet"])


def test_ade20k_reduce_zero_label_pixel_by_pixel(tmp_path):
    root = ft.ade20k(tmp_path / "ADEChallengeData2016")
    cfg = _cfg("ade20k", root)
    assert available_splits(cfg) == ["train", "val"] and dataset_info(cfg).num_classes == 150
    for split, folder in (("train", "training"), ("val", "validation")):
        src = build_source(cfg, split)
        assert [p.parent.name for p in src.images] == [folder] * 2
        for i in range(len(src)):
            raw = _raw(src.masks[i])
            image, mask = src.load(i)
            assert image.shape == (ft.H, ft.W, 3) and mask.dtype == np.uint8
            expect = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
            np.testing.assert_array_equal(mask, expect)  # 0 -> ignore, k -> k-1, 150 -> 149
    assert {0, 255} <= set(np.unique(_raw(src.masks[0]))) | {255}
    ft.png(root / "annotations" / "validation" / "ADE_val_00000002.png", ft.stripes([0, 151]))
    with pytest.raises(DataError, match=r"ADE_val_00000002.png: label id 151 is not an ADE20K annotation value"):
        build_source(cfg, "val").load(1)


def test_voc_palette_masks_and_border_pixel_by_pixel(tmp_path):
    root = ft.voc(tmp_path / "VOCdevkit" / "VOC2012")
    cfg = _cfg("voc", root)
    assert available_splits(cfg) == ["train", "trainval", "val"] and dataset_info(cfg).num_classes == 21
    src = build_source(cfg, "trainval")
    assert len(src) == 3 and Image.open(src.masks[0]).mode == "P"
    for i in range(len(src)):
        raw = _raw(src.masks[i])
        _, mask = src.load(i)
        np.testing.assert_array_equal(mask, raw)  # indices are the classes; 255 border stays ignore
        assert 255 in mask
    assert dataset_info(cfg).palette[15] == (192, 128, 128)  # person, VOC's own colour
    assert len(build_source(cfg, "val")) == 1
    ft.png(root / "SegmentationClass" / "2007_000002.png", ft.stripes([0, 21]), palette=ft.voc_palette())
    with pytest.raises(DataError, match=r"2007_000002.png: label id 21 is not a VOC class index"):
        build_source(cfg, "val").load(0)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"split list .*val.txt is empty"):
        build_source(cfg, "val")


def test_gta5_label_ids_and_splits(tmp_path):
    root = ft.gta5(tmp_path / "gta5", n=12)
    cfg = _cfg("gta5", root)
    assert available_splits(cfg) == ["train", "val"]
    train, val = build_source(cfg, "train"), build_source(cfg, "val")
    assert [p.name for p in val.images] == ["00010.png"] and len(train) == 11  # every 10th is val
    raw = _raw(val.masks[0])
    np.testing.assert_array_equal(val.load(0)[1], ID_TO_TRAIN_ID[raw])
    root2 = ft.gta5(tmp_path / "gta5_official", n=8, split_mat=True)
    cfg2 = _cfg("gta5", root2)
    assert available_splits(cfg2) == ["test", "train", "val"]
    assert [p.name for p in build_source(cfg2, "test").images] == ["00007.png", "00008.png"]
    assert len(build_source(cfg2, "train")) == 4
    (root / "labels" / "00010.png").unlink()
    with pytest.raises(DataError, match=r"mask missing for image .*00010.png: expected .*labels/00010.png"):
        build_source(cfg, "val")


def test_foggy_cityscapes_betas_as_severities(tmp_path):
    root = ft.foggy(tmp_path / "cityscapes")
    domains = parse_domains([f"foggy_cityscapes:{root}", f"thick=foggy_cityscapes:{root}:beta=0.01:val"])
    assert [(d.name, d.variant) for d in domains] == [("foggy-1", "0.005"), ("foggy-2", "0.01"), ("foggy-3", "0.02"),
                                                      ("thick-2", "0.01")]
    with pytest.raises(DataError, match="both named 'foggy-2'"):
        parse_domains([f"foggy_cityscapes:{root}", f"foggy_cityscapes:{root}:beta=0.01"])
    city = _cfg("cityscapes", root)
    ds = build_domain(city, domains[2])
    assert len(ds) == 2 and all("beta_0.02" in p.name for p in ds.source.images)
    clean = build_source(city, "val")
    np.testing.assert_array_equal(ds.source.load_mask(0), clean.load_mask(0))  # the Cityscapes labels
    assert not np.array_equal(ds.source.load(0)[0], clean.load(0)[0])
    assert absolute_spec(f"foggy_cityscapes:{root}:beta=0.02", tmp_path) == f"foggy=foggy_cityscapes:{root}:beta=0.02:val"
    assert parse_domain(absolute_spec(f"foggy_cityscapes:{root}:beta=0.02", tmp_path)).name == "foggy-3"
    with pytest.raises(DataError, match="beta '0.03' is not one of"):
        parse_domain(f"foggy_cityscapes:{root}:beta=0.03")


def test_acdc_conditions_and_dark_zurich(tmp_path):
    root = ft.acdc(tmp_path / "acdc")
    city = _cfg("cityscapes", ft.cityscapes(tmp_path / "cityscapes"))
    night = parse_domain(f"acdc:{root}:night")
    assert (night.name, night.variant, night.split) == ("acdc_night", "night", "val")
    assert parse_domain(f"acdc:{root}:fog:train").name == "acdc_fog_train"
    ds = build_domain(city, night)
    assert len(ds) == 2 and all("/night/val/" in str(p) for p in ds.source.images)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.source.load_mask(i), _raw(ds.source.masks[i]))  # train ids as they are
    assert len(build_source(_cfg("acdc", root), "train")) == 4  # all conditions when training on ACDC
    with pytest.raises(DataError, match="name one of fog, night, rain, snow"):
        parse_domain(f"acdc:{root}")
    with pytest.raises(DataError, match="ACDC split 'val' of condition snow not found"):
        build_domain(city, f"acdc:{root}:snow")
    dz = ft.dark_zurich(tmp_path / "Dark_Zurich_val_anon")
    d = build_domain(city, f"dark_zurich:{dz}")
    assert parse_domain(f"dark_zurich:{dz}").name == "dark_zurich" and len(d) == 2
    np.testing.assert_array_equal(d.source.load_mask(0), np.asarray(ft.stripes(ft.TRAIN_IDS[::-1])))
    ft.png(dz / "gt" / "val" / "night" / "GOPR0356" / "GOPR0356_frame_000001_gt_labelTrainIds.png", ft.stripes([3, 19]))
    with pytest.raises(DataError, match=r"GOPR0356_frame_000001_gt_labelTrainIds.png: label id 19 is not a Cityscapes train id"):
        d.source.load_mask(1)


def test_domain_of_another_label_space_is_refused(tmp_path):
    ade = ft.ade20k(tmp_path / "ADEChallengeData2016")
    city = _cfg("cityscapes", ft.cityscapes(tmp_path / "cityscapes"))
    with pytest.raises(DataError, match="has 150 classes; the model is trained on 19"):
        build_domain(city, f"ade20k:{ade}")
    assert parse_domain(f"voc:{tmp_path}/VOC2012:train").name == "voc_train"
    with pytest.raises(DataError, match="unknown kind 'zip'"):
        parse_domain("zip:/a")


def test_folder_label_map_suffixes_and_split_lists(tmp_path):
    root = tmp_path / "custom"
    doc = {"classes": ["road", "car"], "label_map": {7: "road", 26: 1, 0: "ignore"}, "image_suffix": ".jpg",
           "mask_suffix": "_mask.png", "split_lists": {"train": "lists/train.txt", "val": "lists/val.txt"}}
    root.mkdir()
    (root / "classes.yaml").write_text(yaml.safe_dump(doc))
    for i in range(3):
        ft.jpg(root / "images" / "a" / f"im{i}.jpg", ft.rgb(i))
        ft.png(root / "masks" / "a" / f"im{i}_mask.png", ft.stripes([7, 26, 0]))
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("a/im0\na/im1\n")
    (root / "lists" / "val.txt").write_text("a/im2\n")
    cfg = _cfg("folder", root)
    assert available_splits(cfg) == ["train", "val"]
    src = build_source(cfg, "train")
    assert len(src) == 2
    np.testing.assert_array_equal(src.load_mask(0), ft.stripes([0, 1, 255]))
    ft.png(root / "masks" / "a" / "im2_mask.png", ft.stripes([7, 9]))
    with pytest.raises(DataError, match=r"im2_mask.png: label id 9 is not mapped by label_map"):
        build_source(cfg, "val").load_mask(0)
    (root / "masks" / "a" / "im1_mask.png").unlink()
    with pytest.raises(DataError, match=r"mask missing for image .*im1.jpg: expected .*im1_mask.png"):
        build_source(cfg, "train")
    doc2 = {"classes": ["a", "b", "c"], "reduce_zero_label": True}
    r2 = tmp_path / "reduced"
    r2.mkdir()
    (r2 / "classes.yaml").write_text(yaml.safe_dump(doc2))
    ft.png(r2 / "images" / "val" / "x.png", ft.rgb(0))
    ft.png(r2 / "masks" / "val" / "x.png", ft.stripes([0, 1, 3, 255]))
    np.testing.assert_array_equal(build_source(_cfg("folder", r2), "val").load_mask(0), ft.stripes([255, 0, 2, 255]))


PLUGIN = '''
from hardseg.data.folder import FolderSource, load_classes
from hardseg.data.registry import DatasetFormat

FORMAT = DatasetFormat("ignored_name", lambda root, split, v, cfg, strict=True: FolderSource(root, split, strict),
                       lambda root, cfg: load_classes(root), lambda root, cfg: ["val"])
'''


def _install(tmp_path, monkeypatch, request, module: str, source: str, entry: str) -> None:
    """A real distribution on sys.path, and a dataset registry that reads it."""
    from hardseg.data import registry

    monkeypatch.syspath_prepend(str(write_plugin_distribution(tmp_path, module, source, "hardseg.datasets", [entry])))
    fresh_registry(monkeypatch, registry.FORMATS)
    request.addfinalizer(lambda: sys.modules.pop(module, None))


def test_dataset_plugin_through_entry_points(tmp_path, monkeypatch, request):
    _install(tmp_path, monkeypatch, request, "hardseg_data_plugin", PLUGIN, "my_set = hardseg_data_plugin:FORMAT")
    root = tmp_path / "mine"
    root.mkdir()
    (root / "classes.yaml").write_text("[a, b]\n")
    ft.png(root / "images" / "val" / "x.png", ft.rgb(0))
    ft.png(root / "masks" / "val" / "x.png", ft.stripes([0, 1]))
    assert "my_set" in available_datasets()
    cfg = load_config(None, ["data.dataset=my_set", f"data.root={root}"]).data
    assert available_splits(cfg) == ["val"] and len(build_source(cfg, "val")) == 1
    assert parse_domain(f"my_set:{root}").name == "mine"


def test_broken_dataset_plugin_is_one_line_error(tmp_path, monkeypatch, request):
    _install(tmp_path, monkeypatch, request, "hardseg_data_broken", "raise ImportError('no such thing')",
             "broken_set = hardseg_data_broken:FORMAT")
    assert "cityscapes" in available_datasets() and "broken_set" not in available_datasets()
    with pytest.raises(ConfigError, match="dataset plugin 'broken_set'.*no such thing.*'data.dataset'") as err:
        load_config(None, ["data.dataset=broken_set"])
    assert "\n" not in str(err.value)

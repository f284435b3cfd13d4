"""Cityscapes and folder formats: id mapping, hierarchy, and one-line DataErrors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hardseg.config import DataConfig
from hardseg.data import available_splits, build_dataset, class_pixel_frequencies, dataset_info
from hardseg.data.cityscapes import CITYSCAPES_INFO, ID_TO_TRAIN_ID, LABELS, CityscapesSource, map_label_ids
from hardseg.data.folder import FolderSource, describe, load_classes
from hardseg.errors import DataError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ Cityscapes

RAW = np.array(
    [
        [7, 8, 11, 12, 13, 17],
        [19, 20, 21, 22, 23, 24],
        [25, 26, 27, 28, 31, 32],
        [33, 0, 1, 6, 9, 255],
    ],
    dtype=np.uint8,
)
TRAIN = np.array(
    [
        [0, 1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10, 11],
        [12, 13, 14, 15, 16, 17],
        [18, 255, 255, 255, 255, 255],
    ],
    dtype=np.uint8,
)


def _city_item(root: Path, split: str, city: str, name: str, raw: np.ndarray, size: tuple[int, int] | None = None) -> tuple[Path, Path]:
    h, w = size or raw.shape
    img = _png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", _rgb(h, w))
    lbl = _png(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", raw)
    return img, lbl


@pytest.fixture()
def city(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    _city_item(root, "train", "aachen", "aachen_000000_000019", RAW)
    _city_item(root, "train", "bremen", "bremen_000001_000019", np.full((4, 6), 26, np.uint8))
    _city_item(root, "val", "lindau", "lindau_000000_000019", RAW[::-1].copy())
    return root


def test_cityscapes_labels_table_and_info() -> None:
    assert CITYSCAPES_INFO.num_classes == 19
    assert CITYSCAPES_INFO.class_names[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES_INFO.class_names[-1] == "bicycle"
    assert len({lb.id for lb in LABELS}) == len(LABELS)
    assert ID_TO_TRAIN_ID[7] == 0 and ID_TO_TRAIN_ID[33] == 18 and ID_TO_TRAIN_ID[9] == 255
    names = CITYSCAPES_INFO.class_names
    (cat,) = CITYSCAPES_INFO.hierarchy
    cats = CITYSCAPES_INFO.hierarchy_names[0]
    assert cats == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    groups = {c: sorted(names[i] for i in range(19) if cats[cat[i]] == c) for c in cats}
    assert groups["flat"] == ["road", "sidewalk"]
    assert groups["construction"] == ["building", "fence", "wall"]
    assert groups["object"] == ["pole", "traffic light", "traffic sign"]
    assert groups["nature"] == ["terrain", "vegetation"]
    assert groups["sky"] == ["sky"]
    assert groups["human"] == ["person", "rider"]
    assert groups["vehicle"] == ["bicycle", "bus", "car", "motorcycle", "train", "truck"]
    assert [names[i] for i in CITYSCAPES_INFO.thin_classes] == ["pole"]
    assert [names[i] for i in CITYSCAPES_INFO.small_classes] == ["traffic light", "traffic sign"]
    assert {names[i] for i in CITYSCAPES_INFO.large_classes} >= {"road", "building", "vegetation", "sky"}


def test_cityscapes_reads_and_maps_ids(city: Path) -> None:
    src = CityscapesSource(city, "train")
    assert len(src) == 2
    image, mask = src.load(0)
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert np.array_equal(mask, TRAIN)
    cfg = DataConfig(dataset="cityscapes", root=str(city))
    assert available_splits(cfg) == ["train", "val"]
    assert dataset_info(cfg) is CITYSCAPES_INFO
    ds = build_dataset(cfg, "val", train=False)
    img, m = ds[0]
    assert img.shape == (3, 4, 6) and m.dtype == torch.int64
    assert np.array_equal(m.numpy(), TRAIN[::-1])
    counts = class_pixel_frequencies(cfg)
    assert counts[13] == 1 + 24 and counts.sum() == int((TRAIN != 255).sum()) + 24
    ds.validate()


def test_cityscapes_errors_name_the_file(city: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        CityscapesSource(tmp_path / "nope", "train")
    assert "nope" in _one_line(err) and "leftImg8bit/<split>/<city>" in str(err.value)

    with pytest.raises(DataError) as err:
        CityscapesSource(city, "test")
    msg = _one_line(err)
    assert "leftImg8bit/test" in msg and "available splits: train, val" in msg

    # unknown raw id
    _, lbl = _city_item(city, "bad", "x", "x_0_0", np.array([[7, 40], [8, 8]], np.uint8))
    src = CityscapesSource(city, "bad")
    with pytest.raises(DataError) as err:
        src.load(0)
    msg = _one_line(err)
    assert str(lbl) in msg and "label id 40" in msg
    with pytest.raises(DataError, match="label id 40"):
        src.validate()
    with pytest.raises(DataError, match="label id 40"):
        map_label_ids(np.array([[40]], np.uint8), "somefile.png")


def test_cityscapes_missing_label_unreadable_image_and_size_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    img, lbl = _city_item(root, "train", "a", "a_0_0", RAW)
    lbl.unlink()
    with pytest.raises(DataError) as err:
        CityscapesSource(root, "train")
    assert str(lbl) in _one_line(err) and "mask missing" in str(err.value)

    _png(lbl, RAW)
    img.write_bytes(b"this is not a png")
    with pytest.raises(DataError) as err:
        CityscapesSource(root, "train").load(0)
    assert str(img) in _one_line(err) and "cannot read image" in str(err.value)

    _png(img, _rgb(5, 6))
    with pytest.raises(DataError) as err:
        CityscapesSource(root, "train").load(0)
    assert str(img) in _one_line(err) and str(lbl) in str(err.value)
    with pytest.raises(DataError, match="must match"):
        CityscapesSource(root, "train").validate()


# ------------------------------------------------------------------ folder format

CLASSES = {
    "name": "toy",
    "classes": ["background", "road", "car", "pole"],
    "large": ["background", "road"],
    "small": ["car"],
    "thin": ["pole"],
    "hierarchy": [{"background": "stuff", "road": "stuff", "car": "thing", "pole": "thing"}],
    "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142], [153, 153, 153]],
}


def _folder(root: Path, classes: object = CLASSES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    m0 = np.array([[0, 1, 1, 2], [3, 3, 255, 0], [0, 0, 1, 1]], np.uint8)
    _png(root / "images" / "train" / "a.png", _rgb(3, 4, 1))
    _png(root / "masks" / "train" / "a.png", m0)
    Image.fromarray(_rgb(3, 4, 2)).save(root / "images" / "train" / "b.jpg")
    _png(root / "masks" / "train" / "b.png", np.ones((3, 4), np.uint8))
    _png(root / "images" / "val" / "c.png", _rgb(3, 4, 3))
    _png(root / "masks" / "val" / "c.png", m0)
    return root


def test_folder_reads_items_and_classes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "toy")
    info = load_classes(root)
    assert info.class_names == ("background", "road", "car", "pole")
    assert info.large_classes == (0, 1) and info.small_classes == (2,) and info.thin_classes == (3,)
    assert info.hierarchy == ((0, 0, 1, 1),) and info.hierarchy_names == (("stuff", "thing"),)
    assert info.palette[1] == (128, 64, 128)
    assert load_classes(_folder(tmp_path / "rt", describe(info))) == info
    cfg = DataConfig(dataset="folder", root=str(root))
    assert available_splits(cfg) == ["train", "val"]
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 2
    img, m = ds[0]
    assert img.shape == (3, 3, 4) and m[1, 2] == 255 and m[0, 3] == 2
    counts = class_pixel_frequencies(cfg)
    assert counts.tolist() == [4, 4 + 12, 1, 2]
    ds.validate()


def test_folder_plain_list_of_classes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "plain", ["bg", "road", "car", "pole"])
    info = load_classes(root)
    assert info.name == "plain" and info.num_classes == 4 and info.hierarchy == ()


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        FolderSource(tmp_path / "missing", "train")
    assert "missing" in _one_line(err) and "images/<split>" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        FolderSource(empty, "train")
    assert "classes.yaml" in _one_line(err)

    root = _folder(tmp_path / "toy")
    with pytest.raises(DataError) as err:
        FolderSource(root, "test")
    msg = _one_line(err)
    assert "images/test" in msg and "available splits: train, val" in msg

    # mask id outside the class table (4 classes -> 7 is invalid), named with the file
    bad = _png(root / "masks" / "train" / "b.png", np.full((3, 4), 7, np.uint8))
    src = FolderSource(root, "train")
    src.load(0)  # the good one still loads
    with pytest.raises(DataError) as err:
        src.load(1)
    msg = _one_line(err)
    assert str(bad) in msg and "label id 7" in msg
    with pytest.raises(DataError, match="label id 7"):
        src.validate()
    with pytest.raises(DataError, match="label id 7"):
        build_dataset(DataConfig(dataset="folder", root=str(root)), "train", train=True)[1]


def test_folder_bad_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "toy")
    img = root / "images" / "train" / "a.png"
    mask = root / "masks" / "train" / "a.png"

    img.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError) as err:
        FolderSource(root, "train").load(0)
    assert str(img) in _one_line(err)
    with pytest.raises(DataError, match="cannot read image"):
        FolderSource(root, "train").validate()

    _png(img, _rgb(5, 4))
    with pytest.raises(DataError) as err:
        FolderSource(root, "train").load(0)
    assert str(mask) in _one_line(err) and "4x3" in str(err.value) and "4x5" in str(err.value)

    _png(img, _rgb(3, 4))
    _png(mask, _rgb(3, 4))
    with pytest.raises(DataError) as err:
        FolderSource(root, "train").load(0)
    assert str(mask) in _one_line(err) and "single-channel" in str(err.value)

    mask.unlink()
    with pytest.raises(DataError) as err:
        FolderSource(root, "train")
    assert str(mask) in _one_line(err)


@pytest.mark.parametrize(
    ("classes", "needle"),
    [
        ({"classes": []}, "non-empty list"),
        ({"classes": ["a", "a"]}, "listed twice"),
        ({"classes": ["a", "b"], "thin": ["c"]}, "unknown class 'c'"),
        ({"classes": ["a", "b"], "hierarchy": [{"a": "x"}]}, "does not map class 'b'"),
        ({"classes": ["a", "b"], "colours": []}, "unknown key 'colours'"),
        ({"classes": ["a", "b"], "palette": [[0, 0, 0]]}, "palette"),
        ("just a string", "classes"),
    ],
)
def test_folder_classes_yaml_errors(tmp_path: Path, classes: object, needle: str) -> None:
    root = tmp_path / "c"
    root.mkdir()
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    with pytest.raises(DataError) as err:
        load_classes(root)
    msg = _one_line(err)
    assert needle in msg and str(root / "classes.yaml") in msg


def test_folder_augmented_items(tmp_path: Path) -> None:
    root = _folder(tmp_path / "toy")
    cfg = DataConfig(dataset="folder", root=str(root), augment={"crop": 8, "scale": (1.0, 2.0)})
    torch.manual_seed(0)
    img, m = build_dataset(cfg, "train", train=True)[0]
    assert img.shape == (3, 8, 8) and m.shape == (8, 8)
    assert set(m.unique().tolist()) <= {0, 1, 2, 3, 255}
    assert (m == 255).any()  # a 3x4 image scaled at most 2x is padded to 8x8

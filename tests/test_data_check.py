"""``hardseg data check`` and bad trees: one ``error:`` line naming the file, exit 2, nothing in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

import fixture_trees as ft
from hardseg.platform.cli import main


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_a_clean_tree_prints_the_table(capsys, tmp_path):
    root = ft.ade20k(tmp_path / "ADEChallengeData2016")
    code, out, err = _run(capsys, ["data", "check", str(root), "--dataset", "ade20k"])
    assert code == 0 and err == ""
    assert "train" in out and "64x32: 2" in out and "0-3, 75, 149-150" in out
    assert "wall" in out and "no problem found" in out


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("case", ["missing_mask", "wrong_suffix", "out_of_range", "empty_list", "unknown_dataset"])
def test_check_a_broken_tree(capsys, tmp_path, case):
    if case == "missing_mask":
        root = ft.gta5(tmp_path / "gta5", n=12)
        (root / "labels" / "00003.png").unlink()
        argv, needle = ["--dataset", "gta5"], "mask missing for image " + str(root / "images" / "00003.png")
    elif case == "wrong_suffix":  # ACDC labels saved as *_gt_labelIds.png instead of *_gt_labelTrainIds.png
        root = ft.acdc(tmp_path / "acdc", conditions=("night",), splits=("val",))
        for p in sorted((root / "gt").rglob("*_gt_labelTrainIds.png")):
            p.rename(p.with_name(p.name.replace("labelTrainIds", "labelIds")))
        argv, needle = ["--dataset", "acdc"], "_gt_labelTrainIds.png"
    elif case == "out_of_range":
        root = ft.cityscapes(tmp_path / "cityscapes")
        bad = next((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
        ft.png(bad, ft.stripes([7, 34, 40]))
        argv, needle = ["--dataset", "cityscapes"], f"mask {bad}: label id 34 is not in the Cityscapes labels table"
    elif case == "empty_list":
        root = ft.voc(tmp_path / "VOC2012")
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text("")
        argv, needle = ["--dataset", "voc"], f"split list {root / 'ImageSets' / 'Segmentation' / 'val.txt'} is empty"
    else:
        root = tmp_path
        argv, needle = ["--dataset", "imagenet"], "unknown dataset 'imagenet'; allowed: acdc"
    code, out, err = _run(capsys, ["data", "check", str(root), *argv])
    assert code == 2
    assert needle in _one_error(err)
    if case == "out_of_range":
        assert "UNKNOWN: 34" in out and "40" in out  # the table names the unknown ids


def test_train_on_a_broken_tree_writes_nothing_to_mlflow(capsys, tmp_path, unopened_sqlite_uri):
    root = ft.voc(tmp_path / "VOC2012")
    bad = root / "SegmentationClass" / "2007_000001.png"
    ft.png(bad, ft.stripes([0, 99]), palette=ft.voc_palette())
    code, _, err = _run(capsys, ["train", "--set", "data.dataset=voc", "--set", f"data.root={root}",
                                 "--set", "data.eval_domains=[]", "--tracking-uri", unopened_sqlite_uri])
    assert code == 2 and f"mask {bad}: label id 99" in _one_error(err)
    assert not Path(unopened_sqlite_uri[len("sqlite:///"):]).exists()  # the store was not even opened

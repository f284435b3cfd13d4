"""``hardseg predict``: PNGs as mmsegmentation's test tool writes them, from a file, a run id or a URI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixture_trees import cityscapes

from hardseg.config import load_config
from hardseg.data import dataset_info
from hardseg.data.base import read_image
from hardseg.data.transforms import EvalTransform
from hardseg.platform.cli import main as cli
from hardseg.platform.predict import label_id_palette, train_id_to_label_id
from hardseg.strategies.build import build_training_model
from hardseg.trainables.evaluation import inference_scores, load_inference_model
from hardseg.trainables.settings import StepSettings

# Cityscapes train id -> label id, from the benchmark's labels table (road 7 ... bicycle 33)
LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def _export(path: Path, overrides: list[str]) -> Path:
    """A model_export.pt of an untrained tiny_seg (the format is what is tested, not the weights)."""
    cfg = load_config(None, ["model.width=8", *overrides])
    info = dataset_info(cfg.data)
    torch.manual_seed(0)
    tm, _ = build_training_model(cfg, info, np.ones(info.num_classes))
    torch.save({"model": tm.export().state_dict(), "epoch": 1, "config": cfg.model_dump(mode="json")}, path)
    return path


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = cityscapes(tmp_path_factory.mktemp("cs"), splits=("val",), n=3)
    model = _export(root / "model_export.pt", ["data.dataset=cityscapes", f"data.root={root}"])
    return root, model


def _expected(model_file: Path, image: Path, **settings) -> np.ndarray:
    model, _ = load_inference_model(model_file)
    rgb = read_image(image)
    x, _ = EvalTransform()(rgb, np.zeros(rgb.shape[:2], np.uint8))
    scores = inference_scores(model, x[None], StepSettings(torch.device("cpu"), **settings))
    return scores.max(1).indices[0].numpy()


def test_cityscapes_ids_for_the_test_server(city, tmp_path, capsys, one_torch_thread):
    root, model = city
    images = sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert cli(["predict", str(model), str(root / "leftImg8bit" / "val"), "--out", str(tmp_path / "ids"),
                "--format", "cityscapes-ids"]) == 0
    assert "wrote 3 cityscapes-ids predictions" in capsys.readouterr().out
    assert train_id_to_label_id()[:19].tolist() == LABEL_IDS
    for image in images:
        png = Image.open(tmp_path / "ids" / f"{image.stem}.png")  # mmseg: <image basename>.png
        assert png.mode == "P" and png.size == Image.open(image).size
        assert png.getpalette()[7 * 3:8 * 3] == [128, 64, 128]  # coloured by label id, as mmseg's results2img
        got = np.asarray(png)
        assert np.array_equal(got, np.asarray(LABEL_IDS)[_expected(model, image)])
    assert label_id_palette()[33 * 3:34 * 3] == [119, 11, 32]


def test_train_ids_and_colours_with_tta_and_slide(city, tmp_path, one_torch_thread):
    root, model = city
    image = sorted((root / "leftImg8bit" / "val").rglob("*.png"))[0]
    args = ["--mode", "slide", "--crop", "24", "24", "--stride", "16", "16",
            "--tta-scales", "0.75", "1.0", "--tta-flip"]
    assert cli(["predict", str(model), str(image), "--out", str(tmp_path / "t"), "--format", "train-ids", *args]) == 0
    assert cli(["predict", str(model), str(image), "--out", str(tmp_path / "c"), "--format", "color", *args]) == 0
    want = _expected(model, image, slide=((24, 24), (16, 16)), tta=((0.75, 1.0), True, None))
    train_ids = np.asarray(Image.open(tmp_path / "t" / f"{image.stem}.png"))
    assert np.array_equal(train_ids, want)
    assert not np.array_equal(want, _expected(model, image))  # the options changed the prediction
    colour = np.asarray(Image.open(tmp_path / "c" / f"{image.stem}.png"))
    palette = np.asarray(dataset_info(load_inference_model(model)[1].data).colors())
    assert colour.shape == (*want.shape, 3) and np.array_equal(colour, palette[want])


def test_from_an_mlflow_run_id(city, tmp_path, one_torch_thread):
    from mlflow.tracking import MlflowClient

    from hardseg.platform.export import log_mlflow_model

    root, model = city
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    log_mlflow_model(client, run_id, model)
    image = sorted((root / "leftImg8bit" / "val").rglob("*.png"))[0]
    assert cli(["predict", run_id, str(image), "--out", str(tmp_path / "r"), "--tracking-uri", uri]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r" / f"{image.stem}.png")), _expected(model, image))


def _one_line_exit_2(capsys, argv: list[str], needle: str) -> None:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_bad_input_is_one_line_exit_2(city, tmp_path, capsys):
    root, model = city
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    _one_line_exit_2(capsys, ["predict", str(model), str(empty), "--out", str(out)], f"no images in {empty}")
    _one_line_exit_2(capsys, ["predict", str(model), str(tmp_path / "nope"), "--out", str(out)], "not found")
    assert not out.exists()  # nothing written
    synthetic = _export(tmp_path / "synthetic.pt", [])
    image = sorted((root / "leftImg8bit" / "val").rglob("*.png"))[0]
    _one_line_exit_2(capsys, ["predict", str(synthetic), str(image), "--out", str(out), "--format",
                              "cityscapes-ids"], "Cityscapes' 19 classes")
    _one_line_exit_2(capsys, ["predict", str(model), str(image), "--out", str(out), "--tta-scales", "0"],
                     "eval.tta.scales")

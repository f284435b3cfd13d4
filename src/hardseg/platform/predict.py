"""``hardseg predict``: a trained model's predictions written as PNG files, as mmsegmentation's test tool does.

One PNG per input image, named after it (``<image stem>.png``, as mmseg's
``CityscapesDataset.results2img``), in one of three formats:

* ``cityscapes-ids``: Cityscapes label ids (train id → id through the labels table,
  so ``road`` is 7), a palette PNG coloured by label id: the files the Cityscapes
  test server takes (it matches each file to its image by ``<city>_<seq>_<frame>``);
* ``train-ids``: the predicted class ids themselves (0 … C-1), a palette PNG
  coloured with the dataset's palette;
* ``color``: an RGB PNG, each pixel its class colour, for looking at.

The model is a ``model_export.pt`` / ``checkpoint.pt`` file, an MLflow model URI
(``runs:/<id>/model``, ``models:/<name>/<version>``) or a bare MLflow run id (its
``model/``). Inference is the model's evaluation settings (``eval.mode``, window and
stride, ``eval.tta``), which the command line may replace
(:func:`hardseg.trainables.evaluation.with_inference_options`): each image alone, at its
own size, through :func:`hardseg.trainables.evaluation.inference_scores`, exactly as
``hardseg evaluate`` scores it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from hardseg.config import HardsegConfig
from hardseg.data import dataset_info
from hardseg.data.base import IMAGE_EXTENSIONS, read_image
from hardseg.data.cityscapes import CITYSCAPES_INFO, LABELS
from hardseg.data.transforms import EvalTransform
from hardseg.errors import ConfigError, DataError
from hardseg.models import predict_classes
from hardseg.platform import tracking
from hardseg.platform.export import is_model_uri, load_logged_model
from hardseg.trainables.evaluation import inference_scores, load_inference_model
from hardseg.trainables.settings import StepSettings

FORMATS = ("cityscapes-ids", "train-ids", "color")
RUN_ID = re.compile(r"[0-9a-f]{32}")


def train_id_to_label_id() -> np.ndarray:
    """uint8 lookup table: Cityscapes train id (0-18) → label id (7 = road, ..., 33 = bicycle)."""
    lut = np.zeros(256, dtype=np.uint8)
    for label in LABELS:
        if label.train_id != 255 and label.id >= 0:
            lut[label.train_id] = label.id
    return lut


def label_id_palette() -> list[int]:
    """The flat PIL palette of the Cityscapes labels, indexed by label id (as mmseg's results2img)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in LABELS:
        if label.id >= 0:
            palette[label.id] = label.color
    return palette.reshape(-1).tolist()


def find_images(paths: Sequence[str]) -> list[Path]:
    """Every image named or inside a named folder (recursively, sorted); DataError when there is none."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not inside:
                raise DataError(f"no images in {p} (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)")
            found += inside
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{p} is not an image (expected {', '.join(IMAGE_EXTENSIONS)})")
            found.append(p)
        else:
            raise DataError(f"image or folder not found: {p}")
    seen: dict[str, Path] = {}
    for f in found:
        if f.stem in seen and seen[f.stem] != f:
            raise DataError(f"two images would both be written as {f.stem}.png ({seen[f.stem]} and {f}); "
                            f"predict them into separate --out folders")
        seen[f.stem] = f
    return list(dict.fromkeys(found))


def load_model(model: str, tracking_uri: str | None) -> tuple[torch.nn.Module, HardsegConfig]:
    """The inference model and run config of a file, an MLflow model URI or an MLflow run id."""
    if RUN_ID.fullmatch(model) and not Path(model).exists():
        model = f"runs:/{model}/model"
    if is_model_uri(model):
        return load_logged_model(model, tracking.resolve_tracking_uri(tracking_uri))
    return load_inference_model(model)


def encode(pred: np.ndarray, fmt: str, palette: Sequence[Sequence[int]]) -> Image.Image:
    """The PNG image of a (H, W) class-id prediction in ``fmt``."""
    if fmt == "cityscapes-ids":
        out = Image.fromarray(train_id_to_label_id()[pred], mode="L").convert("P")
        out.putpalette(label_id_palette())
        return out
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if fmt == "color":
        return Image.fromarray(colours[pred], mode="RGB")
    out = Image.fromarray(pred.astype(np.uint8), mode="L").convert("P")
    out.putpalette(colours.reshape(-1).tolist())
    return out


@torch.no_grad()
def predict_images(model: torch.nn.Module, cfg: HardsegConfig, images: Sequence[Path], out_dir: Path, fmt: str,
                   device: str = "cpu") -> list[Path]:
    """Write one PNG per image into ``out_dir``; returns the files written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    meta = getattr(model, "metadata", None)  # an MLflow model carries its classes; a file's come from the dataset
    if meta:
        names, palette = tuple(meta["class_names"]), meta["palette"]
    else:
        info = dataset_info(cfg.data)
        names, palette = info.class_names, info.colors()
    if fmt == "cityscapes-ids" and names != CITYSCAPES_INFO.class_names:
        raise ConfigError(f"--format cityscapes-ids needs a model of Cityscapes' 19 classes; this one predicts "
                          f"{len(names)} classes of '{cfg.data.dataset}' (use train-ids or color)")
    dev = torch.device(device)
    settings = StepSettings.resolve(cfg, dev, world_size=1)
    model = model.to(dev).eval()
    to_tensor = EvalTransform()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        rgb = read_image(path)
        x, _ = to_tensor(rgb, np.zeros(rgb.shape[:2], dtype=np.uint8))
        pred = predict_classes(inference_scores(model, x[None].to(dev), settings))[0]
        target = out_dir / f"{path.stem}.png"
        encode(pred.to(torch.uint8).cpu().numpy(), fmt, palette).save(target)
        written.append(target)
    return written

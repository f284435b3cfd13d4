"""Runs' exported models in MLflow's model format (``mlflow.pytorch``), and loading them back.

At the end of every run the best model (``model_export.pt``) is rebuilt, wrapped
as :class:`hardseg.models.export.ExportedModel` (images → logits) and written
with ``mlflow.pytorch.save_model`` (pickle serialisation, so any input size
works; ``pt2`` would fix the traced shapes) into the run's ``model/`` artifact
folder next to ``model_export.pt`` and ``config.yaml``: the ``MLmodel`` file
carries hardseg's metadata (architecture, encoder, class names, palette,
normalisation, config), a tensor signature ``images (-1, 3, -1, -1) float32 →
logits (-1, C, -1, -1)`` and a 32×32 input example. It is written with
``save_model`` + ``MlflowClient.log_artifacts`` rather than ``log_model`` so
that no fluent (process-global) active run or tracking URI is touched;
``mlflow.pytorch.load_model("runs:/<id>/model")`` and
``mlflow.register_model`` take it as a logged model (docs/models.md).

``hardseg export RUN --format mmseg`` (:func:`export_mmseg`) writes a run's model
back in mmsegmentation's checkpoint layout (:mod:`hardseg.models.mmseg_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.artifacts import download_artifacts
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from hardseg.config import HardsegConfig
from hardseg.data import dataset_info
from hardseg.data.normalisation import IMAGENET_MEAN, IMAGENET_STD
from hardseg.errors import ConfigError, one_line
from hardseg.models.export import ExportedModel, export_metadata
from hardseg.platform.tracking import resolve_tracking_uri
from hardseg.models.mmseg_checkpoint import hl_head, to_mmseg_checkpoint
from hardseg.strategies.build import build_training_model
from hardseg.trainables.checkpoints import EXPORT_FILE
from hardseg.trainables.evaluation import load_inference_model

ARTIFACT = "model"
EXAMPLE_SIDE = 32  # every built-in model takes 32×32 (smp encoders need multiples of 32)


def _requirements(model_name: str) -> list[str]:
    pkgs = ["torch", "torchvision", "hardseg"] + (["segmentation-models-pytorch", "timm"]
                                                  if model_name.startswith("smp:") else [])
    out = []
    for pkg in pkgs:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def build_exported_model(export_file: Path):
    """The :class:`ExportedModel` of a ``model_export.pt`` (best weights, run config, dataset info)."""
    model, cfg = load_inference_model(export_file)
    epoch = torch.load(export_file, map_location="cpu", weights_only=False).get("epoch")
    meta = export_metadata(cfg, dataset_info(cfg.data), IMAGENET_MEAN, IMAGENET_STD, epoch)
    return ExportedModel(model, meta).eval()


def save_mlflow_model(exported, path: Path) -> None:
    """``exported`` in MLflow's pytorch format at ``path`` (a new folder)."""
    meta = exported.metadata
    example = np.zeros((1, 3, EXAMPLE_SIDE, EXAMPLE_SIDE), dtype=np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, meta["num_classes"], -1, -1), "logits")]))
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the pickle-format notice, once per run
    try:
        mlflow.pytorch.save_model(exported, str(path), signature=signature, input_example=example, metadata=meta,
                                  pip_requirements=_requirements(meta["architecture"]),
                                  serialization_format="pickle")
    finally:
        quiet.setLevel(level)


def log_mlflow_model(client, run_id: str, export_file: Path) -> None:
    """Write the run's best model as an MLflow model under ``model/`` of run ``run_id``."""
    exported = build_exported_model(export_file)
    with tempfile.TemporaryDirectory(prefix="hardseg-mlflow-model-") as d:
        save_mlflow_model(exported, Path(d) / ARTIFACT)
        client.log_artifacts(run_id, str(Path(d) / ARTIFACT), ARTIFACT)


def is_model_uri(location: str) -> bool:
    return location.startswith(("runs:/", "models:/")) or ("://" in location and not Path(location).exists())


def load_logged_model(uri: str, tracking_uri: str) -> tuple[torch.nn.Module, Any]:
    """(model, HardsegConfig) of a logged hardseg model (``runs:/<id>/model``, ``models:/<name>/<version>``);
    needs nothing of the dataset (class names, palette and normalisation are in its metadata)."""
    try:
        local = download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
        meta = Model.load(local).metadata or {}
    except Exception as exc:
        msg = one_line(exc, typed=False)
        raise ConfigError(f"cannot load the MLflow model {uri} from {tracking_uri}: {msg}") from None
    if "config" not in meta:
        raise ConfigError(f"{uri} is not a hardseg model (its MLmodel has no hardseg metadata)")
    model = mlflow.pytorch.load_model(local, map_location="cpu")
    return model.eval(), HardsegConfig.model_validate(meta["config"])


def register(run_id: str, name: str, tracking_uri: str) -> str:
    """Register run ``run_id``'s model as a new version of ``name``; returns ``models:/<name>/<version>``.

    ``mlflow.register_model`` reads MLflow's global tracking URI, and ``mlflow.set_tracking_uri`` also writes
    it into this process's ``MLFLOW_TRACKING_URI`` (which MLflow keeps equal to the global): both are put back
    afterwards, so a caller in the same process (and every process it starts later) keeps its own store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mv = mlflow.register_model(f"runs:/{run_id}/{ARTIFACT}", name)
    finally:
        mlflow.set_tracking_uri(before)  # None: unset again, the variable with it
    return f"models:/{mv.name}/{mv.version}"


# -- hardseg export RUN --format mmseg -------------------------------------------------------------------------
def run_export_file(run: str, tracking_uri: str | None) -> tuple[Path, str | None]:
    """(local ``model_export.pt``, run id or None) of ``run``: a file, a run id or ``runs:/<id>[/...]``
    (from ``tracking_uri``, None: the default store)."""
    if Path(run).is_file():
        return Path(run), None
    tracking_uri = resolve_tracking_uri(tracking_uri)
    run_id = run[len("runs:/"):].split("/")[0] if run.startswith("runs:/") else run
    try:
        local = download_artifacts(artifact_uri=f"runs:/{run_id}/{ARTIFACT}/{EXPORT_FILE}",
                                   dst_path=tempfile.mkdtemp(prefix="hardseg-export-"), tracking_uri=tracking_uri)
    except Exception as exc:
        msg = one_line(exc, typed=False)
        raise ConfigError(f"export: cannot fetch {ARTIFACT}/{EXPORT_FILE} of run '{run_id}' from {tracking_uri}: "
                          f"{msg} (give a finished run's id or a model_export.pt file)") from None
    return Path(local), run_id


def training_checkpoint_model(state: dict[str, Any]):
    """(network, HL branch or None, HardsegConfig) of a training checkpoint (``checkpoint.pt``)."""
    cfg = HardsegConfig.model_validate(state["config"])
    build_cfg = cfg.model_copy(deep=True)
    build_cfg.model.pretrained, build_cfg.model.init_from, build_cfg.model.init_skip = "none", None, []
    info = dataset_info(cfg.data)
    tm, _ = build_training_model(build_cfg, info, np.ones(info.num_classes))
    tm.load_state_dict(state["model"])
    return tm.net.eval(), hl_head(tm), cfg


def export_mmseg(run: str, out: Path, tracking_uri: str | None = None) -> Path:
    """Write ``run``'s best model as an mmsegmentation checkpoint at ``out`` (``{"meta", "state_dict"}``).

    ``run`` may also be a training checkpoint (``checkpoint.pt``): then HL's branch, if the run
    had one, is written too, as ``weigh_head.*`` (the inference model of ``model_export.pt`` has none)."""
    file, run_id = run_export_file(run, tracking_uri)
    state = torch.load(file, map_location="cpu", weights_only=False)
    hl = None
    if isinstance(state, dict) and "optimizer" in state and "config" in state:
        model, hl, cfg = training_checkpoint_model(state)
    else:
        model, cfg = load_inference_model(file)
    info = dataset_info(cfg.data)
    epoch = state.get("epoch") if isinstance(state, dict) else None
    meta = {"CLASSES": list(info.class_names), "PALETTE": [list(c) for c in info.colors()],
            "epoch": epoch, "hardseg": {"run_id": run_id, "architecture": cfg.model.name,
                                         "strategies": list(cfg.strategies), "source": str(file)}}
    ckpt = to_mmseg_checkpoint(model, meta, cfg.model.name, hl=hl)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out

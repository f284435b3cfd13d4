"""Evaluation: a model's confusion-matrix metrics on a split or an evaluation domain, in training
(every evaluated step, then the best model at the end) and afterwards from a checkpoint file.

Inference (:func:`inference_scores`): ``eval.batch_size`` images at a time, under autocast when AMP
is on, either whole or by sliding windows (``eval.mode: slide``, :func:`slide_logits`) for images
too large for one pass, optionally with test-time augmentation (``eval.tta``,
:mod:`hardseg.trainables.tta`).

Domains (:mod:`hardseg.data.domains`): the dataset's own splits (``val``, ``fog-1`` … ``fog-5``,
``night-3``, ``target`` for the synthetic benchmark), or another dataset with the same label space
given as ``cityscapes:PATH[:SPLIT]`` / ``folder:PATH[:SPLIT]`` (split ``val`` by default, named after
the folder), optionally after ``NAME=``, e.g. a Cityscapes model on a foggy Cityscapes copy. Metrics
are named ``<domain>/<metric>`` (``fog-3/miou``). Two entry points evaluate domains:

* :func:`evaluate_best_model`: at the end of a run, on its workers, the best model on
  ``data.eval_domains`` and ``data.test_split``, with ``best/...`` and robustness;
* :func:`evaluate_domains`: afterwards, in one process (``hardseg evaluate``), a model loaded with
  :func:`load_inference_model` from ``model_export.pt`` (what MLflow stores as
  ``model/model_export.pt``) or ``checkpoint.pt``; both carry the run config, from which the network
  and the strategies' inference parts (C2F's stages) are rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hardseg import keys
from hardseg.config import HardsegConfig, TTAConfig, validate_config
from hardseg.data import build_dataset, dataset_info
from hardseg.data.domains import build_domain, parse_domains
from hardseg.errors import ConfigError
from hardseg.models import SegOutput, predict_classes
from hardseg.robustness import robustness
from hardseg.strategies.build import build_training_model
from hardseg.trainables.best import BEST_METRIC, BestModel
from hardseg.trainables.loaders import build_eval_loader, eval_batch_size
from hardseg.trainables.metrics import SegMetrics
from hardseg.trainables.settings import StepSettings, autocast_for
from hardseg.trainables.tta import tta_probs


# -- inference ----------------------------------------------------------------------------------------
def _logits(out: Any) -> Tensor:
    return out.logits if isinstance(out, SegOutput) else out


def slide_windows(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis, as mmsegmentation's ``slide`` test mode: a grid of ``stride`` steps,
    the last window moved back to end at the border; one window when ``crop`` covers ``size``."""
    crop = min(crop, size)
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, size - crop) for i in range(n)]


@torch.no_grad()
def slide_logits(net: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int],
                 channels_last: bool = False) -> Tensor:
    """Logits (N, C, H, W) of ``images`` by sliding ``crop`` windows ``stride`` apart and averaging the
    windows' logits (float32) where they overlap. Memory: one window of the batch at a time, plus the
    full-size float32 logits."""
    _, _, h, w = images.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    total: Tensor | None = None
    count = torch.zeros((1, 1, h, w), device=images.device)
    for y in slide_windows(h, ch, stride[0]):
        for x in slide_windows(w, cw, stride[1]):
            window = images[:, :, y:y + ch, x:x + cw]
            if channels_last:
                window = window.contiguous(memory_format=torch.channels_last)
            logits = _logits(net(window)).float()
            if total is None:
                total = logits.new_zeros((images.shape[0], logits.shape[1], h, w))
            total[:, :, y:y + ch, x:x + cw] += logits
            count[:, :, y:y + ch, x:x + cw] += 1
    assert total is not None
    return total.div_(count)  # in place: no second full-size copy


@torch.no_grad()
def inference_scores(net: nn.Module, images: Tensor, settings: StepSettings) -> Tensor:
    """Class scores (N, C, H, W) of a batch as ``settings`` say: logits of a whole or sliding-window pass,
    or with ``settings.tta`` the averaged softmax probabilities (:func:`hardseg.trainables.tta.tta_probs`)."""
    slide = settings.slide

    def one_pass(x: Tensor) -> Tensor:
        if slide is not None:
            return slide_logits(net, x, slide[0], slide[1], settings.channels_last)
        return _logits(net(x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x))

    with autocast_for(settings.device, settings.amp, settings.amp_dtype):
        if settings.tta is None:
            return one_pass(images)
        # probabilities back to the input size as the network resizes its own logits (mmseg: align_corners)
        return tta_probs(one_pass, images, *settings.tta, align_corners=getattr(net, "align_corners", False))


# -- metrics of a split or a domain -------------------------------------------------------------------
@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, metrics: SegMetrics, settings: StepSettings) -> dict[str, float]:
    """Confusion-matrix metrics over a (sharded) split, summed over ranks.

    ``settings.amp``: autocast as in training; ``settings.slide``: ``(crop, stride)`` for
    sliding-window inference (:func:`slide_logits`), else each batch in one pass; ``settings.tta``:
    test-time augmentation (:func:`inference_scores`).
    """
    net.eval()
    for images, target in loader:
        metrics.update(target, predict_classes(inference_scores(net, images.to(settings.device, non_blocking=True),
                                                                settings)))
    metrics.reduce_from_all_processes()
    return metrics.compute()


def metrics_for(info) -> SegMetrics:
    """Empty metrics for a dataset described by ``info`` (its classes and class groups)."""
    return SegMetrics(info.num_classes, info.class_names, info.large_classes, info.small_classes,
                      info.thin_classes, ignore_index=info.ignore_index)


def _domain_metrics(model: nn.Module, cfg: HardsegConfig, specs: list[str],
                    loader_for: Callable[[Dataset], DataLoader], settings: StepSettings) -> dict[str, float]:
    """``{"<domain name>/<metric>": value}`` for every domain spec (:mod:`hardseg.data.domains`; bad specs or
    data raise DataError); ``loader_for`` batches a domain's dataset."""
    out: dict[str, float] = {}
    for domain in parse_domains(specs):
        ds = build_domain(cfg.data, domain)
        res = evaluate(model, loader_for(ds), metrics_for(ds.info), settings)
        out.update({f"{domain.name}/{k}": v for k, v in res.items()})
    return out


def evaluate_best_model(cfg: HardsegConfig, best: BestModel, inference: nn.Module, settings: StepSettings,
                        rank: int, world_size: int) -> dict[str, float]:
    """What the last report adds: the best model (``best``'s weights in a copy of ``inference``) on this
    rank's shard of every ``data.eval_domains`` entry and of ``data.test_split``, summed over ranks:

    * ``best/epoch`` (``best/iteration``) and ``best/val/<metric>``: the best step and its validation metrics;
    * ``<domain>/<metric>``: the best model on each domain (``fog-3/miou``, ``fog-3/band_iou``,
      ``fog-3/small_iou``, ``fog-3/thin_iou``, ``fog-3/iou/<class>``, ...);
    * ``robustness/<family>/miou``: mean over the evaluated severities of ``<family>-<s>/miou`` /
      ``best/val/miou`` (:mod:`hardseg.robustness`); with ``corrupt:`` domains also
      ``robustness/mPC/miou`` and ``robustness/rPC/miou``;
    * ``test/<metric>``: the best model on ``data.test_split`` when set (the split the final numbers are
      reported on; the best step is still chosen on val).
    """
    best_model = best.model(inference)

    def loader_for(ds: Dataset) -> DataLoader:
        return build_eval_loader(cfg, ds, rank, world_size, settings.device)

    domains = _domain_metrics(best_model, cfg, cfg.data.eval_domains, loader_for, settings)
    out: dict[str, float] = best.metrics()
    out.update(domains)
    out.update(robustness(domains, BEST_METRIC, clean=best.score))
    if cfg.data.test_split:  # held out: reported here only, never used to pick an epoch
        test_set = build_dataset(cfg.data, cfg.data.test_split, train=False)
        res = evaluate(best_model, loader_for(test_set), metrics_for(test_set.info), settings)
        out.update({f"{keys.TEST_PREFIX}{k}": v for k, v in res.items()})
    return out


# -- after training: a checkpoint file on evaluation domains ------------------------------------------
def load_inference_model(path: str | Path) -> tuple[nn.Module, HardsegConfig]:
    """The inference model stored at ``path`` and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (pass a model_export.pt or checkpoint.pt file)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"{path} is not a hardseg checkpoint (no 'model' and 'config' entries)")
    cfg = HardsegConfig.model_validate(state["config"])
    # Class frequencies only shape cb_ce's training loss; inference does not use them. The stored
    # weights replace the initial ones: model.pretrained / init_from files are not needed (nor read).
    info = dataset_info(cfg.data)
    build_cfg = cfg.model_copy(deep=True)
    build_cfg.model.pretrained, build_cfg.model.init_from = "none", None
    tm, _ = build_training_model(build_cfg, info, np.ones(info.num_classes))
    if "optimizer" in state:  # a training checkpoint: the whole TrainingModel
        tm.load_state_dict(state["model"])
        return tm.export().eval(), cfg
    model = tm.export()
    model.load_state_dict(state["model"])
    return model.eval(), cfg


@torch.no_grad()
def evaluate_domains(model: nn.Module, cfg: HardsegConfig, domains: list[str], device: str = "cpu",
                     batch_size: int | None = None) -> dict[str, float]:
    """``{"<domain name>/<metric>": value}`` for every domain spec (bad specs or data raise DataError), in
    this process (no sharding).

    Batches of ``batch_size`` (default ``eval.batch_size``), whole or sliding-window inference and
    autocast (``train.amp``) as the run's ``cfg.eval`` and ``cfg.train`` say.
    """
    dev = torch.device(device)
    size = batch_size or eval_batch_size(cfg)
    return _domain_metrics(model.to(dev), cfg, domains,
                           lambda ds: DataLoader(ds, batch_size=size, pin_memory=dev.type == "cuda"),
                           StepSettings.resolve(cfg, dev, world_size=1))


def with_inference_options(cfg: HardsegConfig, mode: str | None = None, crop: Sequence[int] | None = None,
                           stride: Sequence[int] | None = None, tta_scales: Sequence[float] | None = None,
                           tta_flip: bool | None = None, tta_img_scale: Sequence[int] | None = None) -> HardsegConfig:
    """``cfg`` with a command line's inference options (``hardseg evaluate`` / ``predict``: ``--mode``,
    ``--crop``, ``--stride``, ``--tta-scales``, ``--tta-flip``, ``--tta-img-scale``) in place of the run's
    ``eval`` settings, validated as a config (a scale <= 0 or a slide mode without a window raise ConfigError)."""
    tree: dict[str, Any] = cfg.model_dump(mode="json")
    ev = tree["eval"]
    if mode is not None:
        ev["mode"] = mode
    if crop is not None:
        ev["crop"] = list(crop)
    if stride is not None:
        ev["stride"] = list(stride)
    if tta_scales is not None or tta_flip or tta_img_scale is not None:
        tta = ev.get("tta") or TTAConfig().model_dump(mode="json")
        if tta_scales is not None:
            tta["scales"] = list(tta_scales)
        if tta_flip:
            tta["flip"] = True
        if tta_img_scale is not None:
            tta["img_scale"] = list(tta_img_scale)
        ev["tta"] = tta
    return validate_config(tree, "inference options")  # check_eval: a slide mode needs a window

"""The prediction panels a run logs beside its metrics (``train.log_images_every``): the strategies'
panels (:meth:`hardseg.strategies.Objective.visuals`) on the first validation images, as PNG bytes
that go with a log, never with a checkpoint."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hardseg.config import HardsegConfig
from hardseg.models import SegOutput
from hardseg.strategies import Objective, TrainingModel
from hardseg.trainables.schedule import EPOCH, Schedule
from hardseg.trainables.settings import StepSettings


def wants_visuals(cfg: HardsegConfig, schedule: Schedule, done: int, evaluated: int) -> bool:
    """``train.log_images_every``: every n-th epoch (epoch schedules) or n-th evaluation, and at the end."""
    every = cfg.train.log_images_every
    if not every:
        return False
    if done == schedule.iters:
        return True
    if schedule.unit == EPOCH:
        return schedule.step_of(done) % every == 0
    return schedule.evaluates(done) and evaluated % every == 0


def visual_panels(tm: TrainingModel, objective: Objective, loader: DataLoader, settings: StepSettings
                  ) -> dict[str, bytes]:
    """The strategies' panels on the first images of ``loader``, as PNG files in memory."""
    return _png_bytes(_visuals(tm, objective, loader, settings))


def _visual_batch(loader: DataLoader, n: int = 4, window: tuple[int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``loader``, cut to their top-left ``window`` (slide mode) to bound memory."""
    images, target = next(iter(loader))
    h, w = window or images.shape[-2:]
    return images[:n, :, :h, :w], target[:n, :h, :w]


@torch.no_grad()
def _visuals(tm: TrainingModel, objective: Objective, loader: DataLoader, settings: StepSettings
             ) -> dict[str, np.ndarray]:
    """The strategies' panels (:meth:`Objective.visuals`) on the first images of ``loader``."""
    images, target = _visual_batch(loader, window=settings.slide[0] if settings.slide else None)
    images, target = images.to(settings.device), target.to(settings.device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    was_training = tm.training
    tm.eval()
    try:
        out = SegOutput.from_dict(tm(images))
        return objective.visuals(out, images, target)
    finally:
        tm.train(was_training)


def _png_bytes(visuals: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The visuals as PNG files in memory (they go with a log, never with a checkpoint)."""
    out = {}
    for name, img in visuals.items():
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
        out[name.replace("/", "_")] = buf.getvalue()
    return out

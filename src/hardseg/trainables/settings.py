"""How a worker runs its steps: device, mixed precision, memory format, evaluation mode, DDP size.

:meth:`StepSettings.resolve` reads them from the run config once, in :func:`~hardseg.trainables.loop.fit`;
training (:func:`~hardseg.trainables.loop.train_steps`) and evaluation
(:func:`~hardseg.trainables.evaluation.evaluate`) take them as they are. :func:`configure_backends`
sets PyTorch's process-wide switches (cuDNN autotuning, deterministic kernels).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from hardseg.config import HardsegConfig
from hardseg.errors import ConfigError

FINITE_CHECK_EVERY = 32  # CUDA steps between reads of the device-side non-finite flag


@dataclass(frozen=True)
class StepSettings:
    """How this worker runs its training and evaluation steps; :meth:`resolve` builds it once in
    :func:`~hardseg.trainables.loop.fit`.

    ``amp``: autocast, in ``amp_dtype`` (None: float16 on CUDA, bfloat16 on CPU; float16 training also
    uses a GradScaler), from ``train.amp`` (:func:`resolve_amp`);
    ``channels_last``: NHWC inputs; ``slide``: ``(crop, stride)`` for sliding-window evaluation
    (None: whole images); ``world_size``: DDP ranks, over which losses and the non-finite flag are
    reduced; ``epochs``: the run's length, for the loss schedule and the progress bar;
    ``check_every``: steps between reads of the non-finite flag (None: :data:`FINITE_CHECK_EVERY`
    on CUDA, 1 on CPU; :meth:`resolve` leaves it None, tests/test_gpu_ready.py sets it to run CUDA's
    deferred check on a CPU).
    """

    device: torch.device
    amp: bool = False
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    slide: tuple[tuple[int, int], tuple[int, int]] | None = None
    tta: tuple[tuple[float, ...], bool, tuple[int, int] | None] | None = None  # eval.tta: (scales, flip, img_scale)
    world_size: int = 1
    epochs: int = 1
    check_every: int | None = None

    @classmethod
    def resolve(cls, cfg: HardsegConfig, device: torch.device, world_size: int) -> "StepSettings":
        """``train.amp``, ``train.channels_last`` (``auto``: on for CUDA), ``eval.mode`` and ``train.epochs``."""
        dtype = resolve_amp(cfg.train.amp, device)
        return cls(device, amp=dtype is not None, amp_dtype=dtype,
                   channels_last=resolve_flag(cfg.train.channels_last, device), slide=slide_settings(cfg),
                   tta=(tuple(cfg.eval.tta.scales), cfg.eval.tta.flip, cfg.eval.tta.img_scale)
                   if cfg.eval.tta else None,
                   world_size=world_size, epochs=cfg.train.epochs or 1)

    @property
    def finite_check_every(self) -> int:
        return self.check_every or (FINITE_CHECK_EVERY if self.device.type == "cuda" else 1)


def resolve_flag(value: str, device: torch.device) -> bool:
    """``auto`` means on for CUDA, off for CPU."""
    return device.type == "cuda" if value == "auto" else value == "on"


def resolve_amp(value: str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` → the autocast dtype, None for full precision: ``auto`` is fp16 on CUDA and off on
    CPU, ``on`` the device's half type (fp16 on CUDA, bf16 on CPU), ``fp16``/``bf16`` as named."""
    if value == "auto":
        value = "fp16" if device.type == "cuda" else "off"
    if value == "on":
        value = "fp16" if device.type == "cuda" else "bf16"
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(value)


def autocast_for(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """Mixed precision as the loop uses it: ``dtype`` (None: float16 on CUDA, bfloat16 on CPU); a null
    context when off."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16))


def slide_settings(cfg: HardsegConfig) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(crop, stride)`` for ``eval.mode: slide`` (None: whole-image inference).

    The window defaults to ``data.augment.crop`` (what the model was trained on),
    the stride to two thirds of the window (mmsegmentation's Cityscapes configs:
    512×1024 windows, 341×683 stride).
    """
    if cfg.eval.mode != "slide":
        return None
    crop = cfg.eval.crop
    if crop is None:
        c = cfg.data.augment.crop
        if c is None:
            raise ConfigError("eval.mode=slide needs a window: set eval.crop (or data.augment.crop), e.g. [512, 1024]")
        crop = (c, c) if isinstance(c, int) else tuple(c)
    stride = cfg.eval.stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    return tuple(crop), tuple(stride)  # type: ignore[return-value]


def configure_backends(cfg: HardsegConfig) -> None:
    """``train.cudnn_benchmark`` and ``train.deterministic`` (process-wide PyTorch switches).

    Deterministic mode warns instead of failing where an op has no deterministic
    kernel (CUDA's bilinear upsampling backward, which every model here uses).
    """
    det = cfg.train.deterministic
    torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not det
    torch.backends.cudnn.deterministic = det
    torch.use_deterministic_algorithms(det, warn_only=True)
    if det:  # cuBLAS needs a fixed workspace for reproducible GEMMs (read when CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

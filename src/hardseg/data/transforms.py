"""Image/mask transforms built on ``torchvision.transforms.v2``.

Training: random scale (bilinear for the image, nearest for the mask), random
crop to the crop size (padding the image with 0 and the mask with the ignore
index 255 where the scaled image is smaller), horizontal flip, then the image
to float in [0, 1] and ImageNet normalisation; the mask becomes int64 class
ids. Geometric operations act on a ``tv_tensors.Image`` and a
``tv_tensors.Mask`` together, so both always see the same parameters.

Evaluation: only float conversion and normalisation.

All randomness comes from torch's global generator (``torch.rand``,
``torch.randint``), so a seeded DataLoader (``worker_init_fn``/``generator``)
reproduces the augmentation exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hardseg.data.config import AugmentConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale`` (relative to the input size).

    Images are resized bilinearly (antialiased); masks with nearest neighbour
    so they keep integer class ids. The mask uses ``NEAREST_EXACT`` (pixel
    centres aligned like the bilinear image resize); plain ``NEAREST`` picks
    ``floor(i * in / out)`` and shifts the mask by up to half a pixel against
    the image.
    """

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        lo, hi = float(scale[0]), float(scale[1])
        if not 0 < lo <= hi:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        self.scale = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = next(F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        lo, hi = self.scale
        s = lo + (hi - lo) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True
        )


def _to_tv(image: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """uint8 image (H, W, 3) array or (3, H, W) tensor, and (H, W) mask, as tv_tensors."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.require(mask, requirements=("C", "W")))
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


_FINAL = [
    v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
    v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
]


def _plain(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image.as_subclass(torch.Tensor).contiguous(), mask.as_subclass(torch.Tensor).contiguous()


class EvalTransform:
    """uint8 image and mask -> normalised float32 (3, H, W) and int64 (H, W)."""

    def __init__(self) -> None:
        self.pipeline = v2.Compose(list(_FINAL))

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = self.pipeline(*_to_tv(image, mask))
        return _plain(img, msk)

    def __repr__(self) -> str:
        return f"EvalTransform({self.pipeline})"


class TrainTransform:
    """Random scale, crop (with padding), horizontal flip, then as :class:`EvalTransform`.

    Args:
        scale: range of the random scale factor.
        crop: crop side (or ``(h, w)``); None crops back to each input's own size.
        hflip: flip horizontally with probability 0.5.
    """

    def __init__(self, scale: tuple[float, float] = (0.75, 1.25), crop: int | tuple[int, int] | None = None, hflip: bool = True) -> None:
        self.scale = (float(scale[0]), float(scale[1]))
        self.crop = (crop, crop) if isinstance(crop, int) else (tuple(crop) if crop is not None else None)
        self.hflip = hflip
        self._pipelines: dict[tuple[int, int], v2.Compose] = {}

    def _pipeline(self, size: tuple[int, int]) -> v2.Compose:
        pipe = self._pipelines.get(size)
        if pipe is None:
            steps: list[v2.Transform] = []
            if self.scale != (1.0, 1.0):
                steps.append(RandomScale(self.scale))
            steps.append(
                v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})
            )
            if self.hflip:
                steps.append(v2.RandomHorizontalFlip(0.5))
            pipe = self._pipelines[size] = v2.Compose(steps + list(_FINAL))
        return pipe

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = _to_tv(image, mask)
        size = self.crop or tuple(img.shape[-2:])
        out_img, out_msk = self._pipeline(size)(img, msk)  # type: ignore[arg-type]
        return _plain(out_img, out_msk)

    def __repr__(self) -> str:
        return f"TrainTransform(scale={self.scale}, crop={self.crop}, hflip={self.hflip})"


def build_transform(aug: AugmentConfig, *, train: bool) -> TrainTransform | EvalTransform:
    """The transform for a split: augmentation per ``aug`` when training, else evaluation."""
    if train and aug.enabled:
        return TrainTransform(scale=aug.scale, crop=aug.crop, hflip=aug.hflip)
    return EvalTransform()


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Normalised float (..., 3, H, W) back to uint8 RGB, for visualisation."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)

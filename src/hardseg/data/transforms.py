"""Image/mask transforms built on ``torchvision.transforms.v2``.

Training: random scale (bilinear for the image, nearest for the mask), random
crop to the crop size (padding the image with 0 and the mask with the ignore
index 255 where the scaled image is smaller), horizontal flip, then the image
to float in [0, 1] and ImageNet normalisation; the mask becomes int64 class
ids. Geometric operations act on a ``tv_tensors.Image`` and a
``tv_tensors.Mask`` together, so both always see the same parameters.

Evaluation: only float conversion and normalisation.

The reference's pipeline (``data.augment.pipeline: mmseg``, :class:`MMSegTrainTransform`):
mmsegmentation 0.22.1's ``Resize`` (ratio × ``img_scale``, keep ratio, sizes
rounded as mmcv's ``imrescale``), ``RandomCrop`` with ``cat_max_ratio``,
``RandomFlip``, ``PhotoMetricDistortion`` (its operations, ranges, order and
coin flips on uint8 pixels, with OpenCV's 8-bit HSV conversions), then
normalisation and padding to the crop (0 in the *normalised* image, 255 in the
mask). Its random draws go through a :class:`Draws` object in mmseg's order,
so a test can feed it numpy's generator and compare with a re-implementation
of mmseg's code draw for draw. Two known differences: images are RGB (mmseg
works in BGR; every step is colour-order symmetric) and the bilinear resize is
torch's on uint8 (OpenCV's fixed-point resize differs by at most one grey level).

All randomness comes from torch's global generator (``torch.rand``,
``torch.randint``), so a seeded DataLoader (``worker_init_fn``/``generator``)
reproduces the augmentation exactly.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hardseg.data.config import AugmentConfig
from hardseg.data.normalisation import IMAGENET_MEAN, IMAGENET_STD

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


# -- the reference's pipeline (mmsegmentation 0.22.1) --------------------------------------------------
class Draws(Protocol):
    """Where :class:`MMSegTrainTransform` takes its random numbers from, in mmseg's order of draws."""

    def random(self) -> float:
        """Uniform in [0, 1)."""

    def randint(self, low: int, high: int) -> int:
        """Uniform integer, ``low <= n < high``."""


class TorchDraws:
    """Draws from torch's global generator (seeded per sample by the training loop)."""

    def random(self) -> float:
        return float(torch.rand((), dtype=torch.float64))

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, ()))


def _uniform(draws: Draws, low: float, high: float) -> float:
    return low + (high - low) * draws.random()  # numpy's uniform(low, high), one double


CAT_MAX_TRIES = 10  # mmseg's RandomCrop: at most 10 redraws while one class dominates
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's ``imrescale`` size: the largest (w, h) with the same ratio inside the long/short edges of ``scale``."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def sample_resize(draws: Draws, w: int, h: int, img_scale: tuple[int, int] | None,
                  ratio_range: tuple[float, float]) -> tuple[int, int]:
    """mmseg's ``Resize(img_scale, ratio_range, keep_ratio=True)``: the new (w, h) of a (w, h) image."""
    lo, hi = ratio_range
    ratio = draws.random() * (hi - lo) + lo
    base = img_scale if img_scale is not None else (w, h)
    return rescale_size(w, h, (int(base[0] * ratio), int(base[1] * ratio)))


def crop_offset(draws: Draws, h: int, w: int, crop: tuple[int, int]) -> tuple[int, int]:
    """A crop's top-left corner (y, x), uniform over the positions that fit (0 where the image is smaller)."""
    y = draws.randint(0, max(h - crop[0], 0) + 1)
    x = draws.randint(0, max(w - crop[1], 0) + 1)
    return y, x


def _dominated(mask: Tensor, cat_max_ratio: float, ignore_index: int) -> bool:
    """True when the crop has at most one class, or one class covers ``cat_max_ratio`` or more of it."""
    counts = torch.bincount(mask.reshape(-1).long(), minlength=256)
    if ignore_index < counts.numel():
        counts[ignore_index] = 0
    counts = counts[counts > 0]
    return counts.numel() <= 1 or float(counts.max()) / float(counts.sum()) >= cat_max_ratio


def cat_max_ratio_crop(draws: Draws, mask: Tensor, crop: tuple[int, int], cat_max_ratio: float = 1.0,
                       ignore_index: int = IGNORE_INDEX) -> tuple[int, int, int]:
    """mmseg's ``RandomCrop`` corner ``(y, x, redraws)``: redrawn up to 10 times while :func:`_dominated`
    (the last draw is kept unchecked); ``redraws`` counts the draws after the first."""
    h, w = mask.shape[-2:]
    y, x = crop_offset(draws, h, w, crop)
    redraws = 0
    if cat_max_ratio < 1.0:
        for _ in range(CAT_MAX_TRIES):
            if not _dominated(mask[..., y:y + crop[0], x:x + crop[1]], cat_max_ratio, ignore_index):
                break
            y, x = crop_offset(draws, h, w, crop)
            redraws += 1
    return y, x, redraws


_HSV_SHIFT = 12
# int32 is enough (|h · HDIV| < 2^28) and twice as fast as int64 here
_SDIV = torch.tensor([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], dtype=torch.int32)
_HDIV = torch.tensor([0] + [round((180 << _HSV_SHIFT) / (6 * i)) for i in range(1, 256)], dtype=torch.int32)


def rgb_to_hsv_u8(img: Tensor) -> Tensor:
    """uint8 (3, H, W) RGB -> uint8 HSV with H in [0, 180): OpenCV's 8-bit ``COLOR_BGR2HSV`` integer arithmetic."""
    r, g, b = img.int().unbind(0)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT  # arithmetic shift: floor, as C on negative ints
    h = torch.where(h < 0, h + 180, h)
    return torch.stack([h, s, v]).to(torch.uint8)


_SECTORS = torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])  # (b, g, r) per sector


def hsv_to_rgb_u8(hsv: Tensor) -> Tensor:
    """uint8 HSV (H in [0, 180)) -> uint8 (3, H, W) RGB: OpenCV's 8-bit ``COLOR_HSV2BGR`` as its SIMD loop
    computes it on x86 (float32 steps, ``1 - s*h`` fused, truncated to uint8), which converts all but
    each row's last ``width mod (4 × SIMD lanes)`` pixels; OpenCV's scalar tail rounds instead (at most
    1 grey level apart). Equal to OpenCV 4.5.5 and 5.0 on every (H, S, V) (benchmarks/README.md)."""
    f32 = torch.float32
    h = hsv[0].to(f32) * (torch.tensor(6, dtype=f32) / torch.tensor(180, dtype=f32))
    s = hsv[1].to(f32) * (torch.tensor(1, dtype=f32) / torch.tensor(255, dtype=f32))
    v = hsv[2].to(f32) * (torch.tensor(1, dtype=f32) / torch.tensor(255, dtype=f32))
    sector = torch.trunc(h)
    frac = h - sector
    one = torch.ones((), dtype=f32)

    def one_minus(a: Tensor, b: Tensor) -> Tensor:  # 1 - a*b rounded once: the FMA of OpenCV's AVX2 build
        return (1.0 - a.double() * b.double()).to(f32)

    tab = torch.stack([v, v * (one - s), v * one_minus(s, frac), v * one_minus(s, one - frac)])
    idx = _SECTORS[sector.long() % 6].permute(2, 0, 1)  # (3, H, W): which tab entry is b, g, r
    bgr = torch.gather(tab, 0, idx) * torch.tensor(255, dtype=f32)
    return bgr.clamp(0, 255).to(torch.uint8).flip(0)  # truncated, as OpenCV's v_trunc; b, g, r -> r, g, b


def _convert(img: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
    """mmseg's ``convert``: float32 ``img * alpha + beta``, clipped to [0, 255], truncated to uint8."""
    return (img.to(torch.float32) * alpha + beta).clamp(0, 255).to(torch.uint8)


def photometric_distortion(img: Tensor, draws: Draws) -> Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a uint8 (3, H, W) image: brightness, contrast first or last
    (a coin), saturation, hue; each applied on its own coin (probability 0.5), draws in mmseg's order."""
    if draws.randint(0, 2):  # brightness
        img = _convert(img, beta=_uniform(draws, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    contrast_first = draws.randint(0, 2) == 1  # mmseg's "mode": 1 = contrast before the HSV steps
    if contrast_first and draws.randint(0, 2):
        img = _convert(img, alpha=_uniform(draws, *CONTRAST_RANGE))
    if draws.randint(0, 2):  # saturation
        hsv = rgb_to_hsv_u8(img)
        hsv[1] = _convert(hsv[1], alpha=_uniform(draws, *SATURATION_RANGE))
        img = hsv_to_rgb_u8(hsv)
    if draws.randint(0, 2):  # hue
        hsv = rgb_to_hsv_u8(img)
        hsv[0] = ((hsv[0].long() + draws.randint(-HUE_DELTA, HUE_DELTA)) % 180).to(torch.uint8)
        img = hsv_to_rgb_u8(hsv)
    if not contrast_first and draws.randint(0, 2):
        img = _convert(img, alpha=_uniform(draws, *CONTRAST_RANGE))
    return img


def normalize(img: Tensor) -> Tensor:
    """uint8 (3, H, W) -> float32, in [0, 1], ImageNet-normalised (as :class:`EvalTransform`)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (img.to(torch.float32) / 255.0 - mean) / std


class MMSegTrainTransform:
    """mmsegmentation 0.22.1's training pipeline (module docstring), image and mask alike.

    Args:
        crop: (height, width) of the crop and of the padded output.
        ratio_range: the random resize ratio (mmseg's ``ratio_range``).
        img_scale: (width, height) the ratio multiplies (keep ratio); None = each image's own size.
        cat_max_ratio: redraw dominated crops (:func:`cat_max_ratio_crop`); 1 = never.
        hflip: flip horizontally with probability 0.5.
        photometric: apply :func:`photometric_distortion`.
        draws: random numbers (default: torch's global generator).
    """

    def __init__(self, crop: int | tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0),
                 img_scale: tuple[int, int] | None = None, cat_max_ratio: float = 1.0, hflip: bool = True,
                 photometric: bool = False, ignore_index: int = IGNORE_INDEX, draws: Draws | None = None) -> None:
        self.crop = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.img_scale = tuple(img_scale) if img_scale is not None else None
        self.cat_max_ratio = float(cat_max_ratio)
        self.hflip = hflip
        self.photometric = photometric
        self.ignore_index = ignore_index
        self.draws: Draws = draws if draws is not None else TorchDraws()

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = _plain(*_to_tv(image, mask))
        # Resize: bilinear (no antialiasing, as OpenCV) for the image, nearest (floor, as OpenCV) for the mask.
        new_w, new_h = sample_resize(self.draws, img.shape[-1], img.shape[-2], self.img_scale, self.ratio_range)
        img = F.resize(img, [new_h, new_w], interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        msk = F.resize(msk[None], [new_h, new_w], interpolation=v2.InterpolationMode.NEAREST)[0]
        y, x, _ = cat_max_ratio_crop(self.draws, msk, self.crop, self.cat_max_ratio, self.ignore_index)
        img, msk = img[:, y:y + self.crop[0], x:x + self.crop[1]], msk[y:y + self.crop[0], x:x + self.crop[1]]
        if self.hflip and self.draws.random() < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        if self.photometric:
            img = photometric_distortion(img, self.draws)
        out = normalize(img)
        pad_h, pad_w = self.crop[0] - out.shape[-2], self.crop[1] - out.shape[-1]
        out = nnf.pad(out, (0, pad_w, 0, pad_h), value=0.0)  # bottom and right, after normalising
        msk = nnf.pad(msk.long(), (0, pad_w, 0, pad_h), value=self.ignore_index)
        return out.contiguous(), msk.contiguous()

    def __repr__(self) -> str:
        return (f"MMSegTrainTransform(crop={self.crop}, ratio_range={self.ratio_range}, img_scale={self.img_scale}, "
                f"cat_max_ratio={self.cat_max_ratio}, hflip={self.hflip}, photometric={self.photometric})")


def build_transform(aug: AugmentConfig, *, train: bool) -> TrainTransform | MMSegTrainTransform | EvalTransform:
    """The transform for a split: augmentation per ``aug`` when training, else evaluation."""
    if train and aug.enabled and aug.pipeline == "mmseg":
        assert aug.crop is not None  # AugmentConfig requires it
        return MMSegTrainTransform(aug.crop, ratio_range=aug.scale, img_scale=aug.img_scale,
                                   cat_max_ratio=aug.cat_max_ratio, hflip=aug.hflip, photometric=aug.photometric)
    if train and aug.enabled:
        return TrainTransform(scale=aug.scale, crop=aug.crop, hflip=aug.hflip)
    return EvalTransform()


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Normalised float (..., 3, H, W) back to uint8 RGB, for visualisation."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)

"""The data package's settings: which dataset, the synthetic benchmark's size, training augmentation.

They live here, inside :mod:`hardseg.data`, so the data modules read their own
settings without importing :mod:`hardseg.config` (which assembles them into a
:class:`~hardseg.config.HardsegConfig` and re-exports them, so
``from hardseg.config import DataConfig`` keeps working). Layouts: docs/datasets.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from hardseg.strict import Strict


class SyntheticConfig(Strict):
    """Size and seed of the procedural hard-pixel benchmark."""

    size: int = Field(64, ge=32, le=1024, description="image side in pixels")
    n_train: int = Field(1200, ge=2)
    n_val: int = Field(200, ge=2)
    n_shift: int = Field(200, ge=2, description="images per shifted evaluation set")
    seed: int = 0


def _positive_img_scale(v: tuple[int, int] | None) -> tuple[int, int] | None:
    if v is not None and min(v) < 1:
        raise ValueError("img_scale must be a positive (width, height), e.g. [2048, 1024]")
    return v


# mmseg's img_scale, (width, height): the training Resize's and the test's (hardseg.config.TTAConfig)
ImgScale = Annotated[tuple[int, int] | None, AfterValidator(_positive_img_scale)]


class AugmentConfig(Strict):
    """Training augmentation, image and mask alike (docs/datasets.md, "Augmentation").

    ``pipeline: torchvision`` (the default): random scale of the image's own size, crop (padding
    with black / ignore before normalising), flip, normalise. ``pipeline: mmseg``: mmsegmentation
    0.22.1's training pipeline, step by step: Resize(``img_scale``, ratio_range=``scale``, keep
    ratio), RandomCrop(``crop``, ``cat_max_ratio``), RandomFlip(0.5), PhotoMetricDistortion (when
    ``photometric``), Normalize, Pad(``crop``, 0 for the image after normalising, 255 for the mask).
    """

    enabled: bool = True
    pipeline: Literal["torchvision", "mmseg"] = Field(
        "torchvision", description="torchvision (hardseg's own) or mmseg (the reference's, mmsegmentation 0.22.1)")
    scale: tuple[float, float] = Field(
        (0.75, 1.25), description="random scale range (mmseg: ratio_range, a factor of img_scale)")
    img_scale: ImgScale = Field(
        None, description="pipeline mmseg: the (width, height) that the ratio multiplies, keeping each image's "
        "aspect ratio, e.g. [2048, 1024] on Cityscapes; None = each image's own size")
    crop: int | tuple[int, int] | None = Field(
        None, description="crop side or (height, width), e.g. [512, 1024] on Cityscapes; None keeps the image size")
    cat_max_ratio: float = Field(
        1.0, gt=0, le=1, description="pipeline mmseg: redraw a crop (up to 10 times) while one class covers this "
        "fraction or more of its non-ignored pixels, or it has a single class; 1 = never (0.75 in the HL paper)")
    hflip: bool = True
    photometric: bool = Field(
        False, description="pipeline mmseg: PhotoMetricDistortion (brightness ±32, contrast and saturation "
        "0.5-1.5, hue ±18, each with probability 0.5)")

    @field_validator("scale")
    @classmethod
    def _scale_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        return v

    @field_validator("crop")
    @classmethod
    def _crop_positive(cls, v: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        if v is not None and min((v, v) if isinstance(v, int) else v) < 1:
            raise ValueError("crop must be a positive side or (height, width)")
        return v

    @model_validator(mode="after")
    def _mmseg_options(self) -> "AugmentConfig":
        if self.pipeline == "mmseg":
            if self.crop is None:
                raise ValueError("pipeline mmseg needs a crop, e.g. data.augment.crop=[769,769]")
            return self
        for key, default in (("img_scale", None), ("cat_max_ratio", 1.0), ("photometric", False)):
            if getattr(self, key) != default:
                raise ValueError(f"{key} belongs to the mmseg pipeline; set data.augment.pipeline=mmseg")
        return self


class DataConfig(Strict):
    """Which dataset to train and evaluate on."""

    dataset: str = Field("synthetic", description="a registered dataset format: synthetic, cityscapes, folder, ade20k, "
                         "voc, gta5, foggy_cityscapes, acdc, dark_zurich, or a hardseg.datasets plugin")
    root: str = Field("data/synthetic", description="dataset folder; relative paths are taken from the working directory")
    synthetic: SyntheticConfig = SyntheticConfig()
    augment: AugmentConfig = AugmentConfig()
    eval_domains: list[str] = Field(
        default_factory=lambda: ["fog-3"],
        description="extra evaluation splits after training, e.g. fog-3, night-1, target",
    )
    corruption_cache: str | None = Field(
        None, description="folder made by 'hardseg data corrupt' that corrupt: domains read their images from; "
                          "None: <root>-corrupted beside the dataset root if it holds a cache, else on the fly")
    loader_workers: int | None = Field(
        None, ge=0, description="DataLoader worker processes per training worker; None = ray.cpus_per_worker - 1 "
                                "(the training process keeps one CPU)")
    prefetch_factor: int = Field(2, ge=1, description="batches each loader worker prepares ahead")
    test_split: str | None = Field(
        None, description="held-out split the best (by val) model is also evaluated on at the end, logged as "
        "test/<metric>; never used to choose epochs or sweep trials")

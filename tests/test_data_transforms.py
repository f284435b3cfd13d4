"""Augmentation keeps image and mask aligned, masks integer, and is reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from hardseg.config import AugmentConfig
from hardseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    build_transform,
    denormalize,
)

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40], [40, 220, 220]], dtype=np.uint8)


def _coded_pair(h: int = 40, w: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mask of 8x8 class blocks and an image whose colour encodes the class.

    No feature is thinner than 8 px, so after scaling by >= 0.5 every class
    region still has an interior that the antialiasing filter cannot reach.
    """
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 4, size=(-(-h // 8), -(-w // 8))).astype(np.uint8)
    cells[:, 0] = 4  # a stripe on the left so that flips are visible
    mask = np.kron(cells, np.ones((8, 8), dtype=np.uint8))[:h, :w]
    return PALETTE[mask], mask


def _check_aligned(img: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3
    assert mask.dtype == torch.int64 and mask.shape == img.shape[1:]
    m = mask.numpy()
    assert set(np.unique(m)) <= {0, 1, 2, 3, 4, 255}
    rgb = denormalize(img).permute(1, 2, 0).numpy().astype(int)
    # Interior pixels (5x5 neighbourhood of one label: beyond the reach of the
    # antialiasing filter) must have their class colour.
    checked = 0
    for c in [0, 1, 2, 3, 4]:
        interior = ndimage.binary_erosion(m == c, np.ones((5, 5)), border_value=0)
        if interior.any():
            err = np.abs(rgb[interior] - PALETTE[c].astype(int)).max()
            assert err <= 3, f"class {c}: colour off by {err}"
            checked += int(interior.sum())
    # Padding: ignore in the mask, black in the image.
    pad = ndimage.binary_erosion(m == 255, np.ones((3, 3)), border_value=0)
    if pad.any():
        assert np.abs(rgb[pad]).max() <= 1
    return checked, int((m == 255).sum())


def test_train_transform_keeps_alignment_and_pads_with_ignore() -> None:
    image, mask = _coded_pair()
    tf = TrainTransform(scale=(0.5, 1.6), crop=48, hflip=True)
    torch.manual_seed(0)
    total_checked = total_pad = 0
    sizes = set()
    for _ in range(25):
        img, m = tf(image, mask)
        assert img.shape == (3, 48, 48)
        checked, pad = _check_aligned(img, m)
        total_checked += checked
        total_pad += pad
        sizes.add(int((m != 255).sum()))
    assert total_checked > 25 * 200
    assert total_pad > 0, "small scales must have padded the crop with 255"
    assert len(sizes) > 5, "the scale should vary"


def test_crop_none_keeps_input_size_and_scale_down_pads() -> None:
    image, mask = _coded_pair(32, 32)
    tf = TrainTransform(scale=(0.5, 0.5), crop=None, hflip=False)
    img, m = tf(image, mask)
    assert img.shape == (3, 32, 32)
    assert int((m != 255).sum()) == 16 * 16  # a half-size image inside a padded 32x32 canvas
    _check_aligned(img, m)


def test_flip_happens_and_is_applied_to_both() -> None:
    image, mask = _coded_pair()
    tf = TrainTransform(scale=(1.0, 1.0), crop=None, hflip=True)
    torch.manual_seed(1)
    flipped = 0
    for _ in range(20):
        img, m = tf(image, mask)
        _check_aligned(img, m)
        if (m.numpy() == mask[:, ::-1]).all():
            flipped += 1
        else:
            assert (m.numpy() == mask).all()
    assert 3 <= flipped <= 17


def test_augmentation_reproducible_from_torch_seed() -> None:
    image, mask = _coded_pair()
    tf = TrainTransform(scale=(0.75, 1.25), crop=40, hflip=True)

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [tf(image, mask)[1] for _ in range(6)]

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_seeded_dataloader_reproduces_augmentation() -> None:
    image, mask = _coded_pair()
    tf = TrainTransform(scale=(0.75, 1.25), crop=32, hflip=True)

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int):
            return tf(image, mask)

    def batches(seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(DS(), batch_size=4, shuffle=True, generator=g)
        return [m for _, m in loader]

    assert all(torch.equal(x, y) for x, y in zip(batches(7), batches(7)))


def test_eval_transform_is_only_normalisation() -> None:
    image, mask = _coded_pair()
    img, m = EvalTransform()(image, mask)
    assert img.dtype == torch.float32 and m.dtype == torch.int64
    expected = (image.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert (m.numpy() == mask).all()
    assert type(img) is torch.Tensor and type(m) is torch.Tensor


def test_build_transform_follows_config() -> None:
    assert isinstance(build_transform(AugmentConfig(), train=True), TrainTransform)
    assert isinstance(build_transform(AugmentConfig(), train=False), EvalTransform)
    assert isinstance(build_transform(AugmentConfig(enabled=False), train=True), EvalTransform)
    tf = build_transform(AugmentConfig(crop=24, scale=(0.9, 1.1), hflip=False), train=True)
    img, m = tf(*_coded_pair())
    assert img.shape == (3, 24, 24) and m.shape == (24, 24)


def test_random_scale_rejects_bad_range() -> None:
    from hardseg.data.transforms import RandomScale

    with pytest.raises(ValueError):
        RandomScale((1.2, 0.8))


@pytest.mark.parametrize("scale", [0.55, 0.75, 1.3, 1.7])
def test_scaled_mask_edges_match_image_edges(scale: float) -> None:
    """Sub-pixel alignment: where the mask switches class, the image has crossed half-way.

    (Plain NEAREST resizing of the mask fails this: it is shifted by up to
    half a pixel against the bilinear image.)
    """
    tf = TrainTransform(scale=(scale, scale), crop=(12, 90), hflip=False)
    for e in range(5, 55, 3):
        mask = np.zeros((12, 60), dtype=np.uint8)
        mask[:, e:] = 1
        image = np.where(mask[..., None] == 1, 250, 0).astype(np.uint8).repeat(3, axis=2)
        torch.manual_seed(e)
        img, m = tf(image, mask)
        g = denormalize(img)[0].numpy().astype(int)
        m = m.numpy()
        for r in range(m.shape[0]):
            if not (m[r] == 1).any() or not (m[r] == 0).any():
                continue
            first = int(np.argmax(m[r] == 1))
            assert m[r, first - 1] == 0
            assert g[r, first] >= 125 and g[r, first - 1] <= 125, (e, r, first, g[r, first - 2 : first + 2])


# -- the reference's pipeline (data.augment.pipeline: mmseg) -------------------------------------------
# A re-implementation written from mmsegmentation 0.22.1's mmseg/datasets/pipelines/transforms.py
# (Resize, RandomCrop, RandomFlip, PhotoMetricDistortion, Normalize, Pad) with numpy's global
# generator, drawing exactly where mmseg draws, on HWC BGR arrays as mmseg holds them. OpenCV's 8-bit
# colour conversions (mmcv.bgr2hsv / hsv2bgr) are a numpy transcription of OpenCV's RGB2HSV_b /
# HSV2RGB_b (cv2 is not a dependency). The image content of the bilinear resize is the one
# step not re-implemented (torch's on both sides): its parameters (the new size) are.

def _mm_rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:  # mmcv.rescale_size
    scale_factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)


def _mm_resize_size(img: np.ndarray, img_scale, ratio_range) -> tuple[int, int]:  # Resize._random_scale
    h, w = img.shape[:2]
    base = (w, h) if img_scale is None else img_scale
    min_ratio, max_ratio = ratio_range
    ratio = np.random.random_sample() * (max_ratio - min_ratio) + min_ratio
    scale = int(base[0] * ratio), int(base[1] * ratio)
    return _mm_rescale_size(w, h, scale)


def _mm_crop_bbox(img: np.ndarray, crop_size) -> tuple[int, int, int, int]:  # RandomCrop.get_crop_bbox
    margin_h = max(img.shape[0] - crop_size[0], 0)
    margin_w = max(img.shape[1] - crop_size[1], 0)
    offset_h = np.random.randint(0, margin_h + 1)
    offset_w = np.random.randint(0, margin_w + 1)
    return offset_h, offset_h + crop_size[0], offset_w, offset_w + crop_size[1]


def _mm_random_crop(img, seg, crop_size, cat_max_ratio, ignore_index=255):  # RandomCrop.__call__
    """The cropped image and mask, the bbox, and how often it was redrawn (the one addition to mmseg's code)."""
    bbox = _mm_crop_bbox(img, crop_size)
    redraws = 0
    if cat_max_ratio < 1.0:
        for _ in range(10):
            seg_temp = seg[bbox[0]:bbox[1], bbox[2]:bbox[3]]
            labels, cnt = np.unique(seg_temp, return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            bbox = _mm_crop_bbox(img, crop_size)
            redraws += 1
    y1, y2, x1, x2 = bbox
    return img[y1:y2, x1:x2, ...], seg[y1:y2, x1:x2], bbox, redraws


_SDIV = [0] + [int(np.rint((255 << 12) / i)) for i in range(1, 256)]
_HDIV = [0] + [int(np.rint((180 << 12) / (6.0 * i))) for i in range(1, 256)]


def _np_bgr2hsv(img: np.ndarray) -> np.ndarray:  # OpenCV RGB2HSV_b, hrange 180
    b, g, r = (img[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    vmin = np.minimum(np.minimum(b, g), r)
    diff = v - vmin
    vr = np.where(v == r, -1, 0)
    vg = np.where(v == g, -1, 0)
    s = (diff * np.take(_SDIV, v) + (1 << 11)) >> 12
    h = (vr & (g - b)) + (~vr & ((vg & (b - r + 2 * diff)) + (~vg & (r - g + 4 * diff))))
    h = (h * np.take(_HDIV, diff) + (1 << 11)) >> 12
    h += np.where(h < 0, 180, 0)
    return np.stack([h, s, v], -1).astype(np.uint8)


def _np_hsv2bgr(img: np.ndarray) -> np.ndarray:  # OpenCV HSV2RGB_b's SIMD loop (HSV2RGB_simd), hrange 180
    f = np.float32
    h = img[..., 0].astype(f) * (f(6.0) / f(180.0))
    s = img[..., 1].astype(f) * (f(1.0) / f(255.0))
    v = img[..., 2].astype(f) * (f(1.0) / f(255.0))
    pre_sector = np.trunc(h)
    h = h - pre_sector
    def fms(a, b):  # 1 - a*b, which an AVX2 build compiles to one fused multiply-add
        return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(f)

    tab0, tab1, tab2, tab3 = v, v * (f(1.0) - s), v * fms(s, h), v * fms(s, f(1.0) - h)
    sector = pre_sector - np.trunc(pre_sector * f(1.0 / 6.0)) * f(6.0)
    b = np.select([sector < 2, sector == 2, sector == 3, sector == 4, sector > 4], [tab1, tab3, tab0, tab0, tab2])
    g = np.select([sector < 1, sector == 1, sector == 2, sector == 3, sector > 3], [tab3, tab0, tab0, tab2, tab1])
    r = np.select([sector < 1, sector == 1, sector == 2, sector == 3, sector == 4, sector > 4],
                  [tab0, tab2, tab1, tab1, tab3, tab0])
    return np.stack([np.trunc(c * f(255.0)) for c in (b, g, r)], -1).astype(np.uint8)  # v_trunc, then v_pack


# Checked against OpenCV 4.5.5 and 5.0 themselves (not a dependency): benchmarks/README.md
_bgr2hsv, _hsv2bgr = _np_bgr2hsv, _np_hsv2bgr


class _MMSegPhotoMetricDistortion:  # PhotoMetricDistortion with its defaults; np.random as mmseg's `random`
    brightness_delta, contrast_lower, contrast_upper = 32, 0.5, 1.5
    saturation_lower, saturation_upper, hue_delta = 0.5, 1.5, 18

    def convert(self, img, alpha=1, beta=0):
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    def brightness(self, img):
        if np.random.randint(2):
            return self.convert(img, beta=np.random.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def contrast(self, img):
        if np.random.randint(2):
            return self.convert(img, alpha=np.random.uniform(self.contrast_lower, self.contrast_upper))
        return img

    def saturation(self, img):
        if np.random.randint(2):
            img = _bgr2hsv(img)
            img[:, :, 1] = self.convert(img[:, :, 1], alpha=np.random.uniform(self.saturation_lower,
                                                                               self.saturation_upper))
            img = _hsv2bgr(img)
        return img

    def hue(self, img):
        if np.random.randint(2):
            img = _bgr2hsv(img)
            img[:, :, 0] = (img[:, :, 0].astype(int) + np.random.randint(-self.hue_delta, self.hue_delta)) % 180
            img = _hsv2bgr(img)
        return img

    def __call__(self, img):
        img = self.brightness(img)
        mode = np.random.randint(2)
        if mode == 1:
            img = self.contrast(img)
        img = self.saturation(img)
        img = self.hue(img)
        if mode == 0:
            img = self.contrast(img)
        return img


def _mm_pipeline(rgb: np.ndarray, seg: np.ndarray, crop, ratio_range, img_scale, cat_max_ratio, photometric):
    """The whole reference pipeline on an RGB uint8 image: normalised float32 CHW RGB and int64 mask."""
    from torchvision.transforms.v2 import functional as TF  # local: the one step both sides share (resize content)

    img = np.ascontiguousarray(rgb[..., ::-1])  # mmseg loads BGR
    new_w, new_h = _mm_resize_size(img, img_scale, ratio_range)
    img = TF.resize(torch.from_numpy(img).permute(2, 0, 1), [new_h, new_w], antialias=False).permute(1, 2, 0).numpy()
    seg = TF.resize(torch.from_numpy(seg)[None], [new_h, new_w], interpolation=TF.InterpolationMode.NEAREST)[0].numpy()
    img, seg, _, _ = _mm_random_crop(img, seg, crop, cat_max_ratio)
    if np.random.rand() < 0.5:  # RandomFlip(prob=0.5), horizontal
        img, seg = img[:, ::-1], seg[:, ::-1]
    if photometric:
        img = _MMSegPhotoMetricDistortion()(np.ascontiguousarray(img))
    mean = np.array([123.675, 116.28, 103.53], np.float64)  # Normalize(to_rgb=True), mmcv.imnormalize
    std = np.array([58.395, 57.12, 57.375], np.float64)
    img = ((img[..., ::-1].astype(np.float32) - mean) / std).astype(np.float32)
    pad_h, pad_w = crop[0] - img.shape[0], crop[1] - img.shape[1]  # Pad(size=crop, pad_val=0, seg_pad_val=255)
    img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    seg = np.pad(seg, ((0, pad_h), (0, pad_w)), constant_values=255)
    return img.transpose(2, 0, 1), seg.astype(np.int64)


class _NumpyDraws:
    """hardseg's Draws from a numpy RandomState: the same stream as mmseg's np.random calls after np.random.seed."""

    def __init__(self, seed: int):
        self.rs = np.random.RandomState(seed)

    def random(self) -> float:
        return float(self.rs.random_sample())

    def randint(self, low: int, high: int) -> int:
        return int(self.rs.randint(low, high))


def test_hsv_conversions_equal_the_reference() -> None:
    """hardseg's torch HSV conversions equal the reference's: every grey and primary ramp, and 2^19 random
    RGB colours; HSV->RGB on every (H, S) pair at 8 values. (All 2^24 colours: benchmarks/README.md.)"""
    from hardseg.data.transforms import hsv_to_rgb_u8, rgb_to_hsv_u8

    v = np.arange(256, dtype=np.uint8)
    ramps = np.stack([np.stack([v, v, v], -1), np.stack([v, 0 * v, 0 * v], -1), np.stack([v, 255 - v, 0 * v], -1)])
    rand = np.random.default_rng(0).integers(0, 256, (2048, 256, 3), dtype=np.uint8)
    rgb = np.concatenate([ramps.reshape(3, 256, 3), rand])
    ours = rgb_to_hsv_u8(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, _bgr2hsv(np.ascontiguousarray(rgb[..., ::-1])))
    vals = np.array([0, 1, 37, 100, 128, 200, 254, 255], dtype=np.uint8)
    hsv = np.stack(np.meshgrid(np.arange(180, dtype=np.uint8), v, vals, indexing="ij"), -1).reshape(180 * 256, 8, 3)
    back = hsv_to_rgb_u8(torch.from_numpy(hsv).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(back, _hsv2bgr(hsv)[..., ::-1])


@pytest.mark.parametrize("seed", range(40))
def test_photometric_distortion_draws_as_mmseg(seed: int) -> None:
    """Same seed -> same coins, same values and the same image, bit for bit; both consume the same draws."""
    from hardseg.data.transforms import photometric_distortion

    rgb = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    np.random.seed(seed)
    ref = _MMSegPhotoMetricDistortion()(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1]
    draws = _NumpyDraws(seed)
    ours = photometric_distortion(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), draws)
    assert np.array_equal(ours.permute(1, 2, 0).numpy(), ref)
    assert draws.rs.random_sample() == np.random.random_sample()  # the streams are at the same place


def _pmd_statistics(apply, n: int, rgb: np.ndarray) -> dict[str, float]:
    """Per-draw image statistics of a photometric distortion, over ``n`` draws."""
    means, stds, hue_moved = [], [], []
    base = rgb.astype(np.float64)
    for _ in range(n):
        out = apply(rgb).astype(np.float64)
        means.append(out.mean() - base.mean())
        stds.append(out.std() / base.std())
        hue_moved.append(float(np.abs(out - base).max() > 0))
    return {"mean_shift": float(np.mean(means)), "mean_shift_sd": float(np.std(means)),
            "contrast_ratio": float(np.mean(stds)), "changed": float(np.mean(hue_moved)),
            "ks_mean": means, "ks_std": stds}


def test_photometric_distortion_statistics_match_the_reference() -> None:
    """hardseg's generator (torch) against mmseg's (numpy): the distribution of the distorted images agrees.

    Kolmogorov-Smirnov on the per-draw mean shift and std ratio over 1500 draws each (p > 0.001)."""
    from scipy.stats import ks_2samp

    from hardseg.data.transforms import TorchDraws, photometric_distortion

    rgb = np.random.default_rng(5).integers(30, 226, (8, 8, 3), dtype=np.uint8)
    torch.manual_seed(0)
    draws = TorchDraws()
    ours = _pmd_statistics(lambda x: photometric_distortion(torch.from_numpy(x).permute(2, 0, 1).contiguous(),
                                                            draws).permute(1, 2, 0).numpy(), 1500, rgb)
    np.random.seed(1)
    ref = _pmd_statistics(lambda x: _MMSegPhotoMetricDistortion()(np.ascontiguousarray(x[..., ::-1]))[..., ::-1],
                          1500, rgb)
    print({k: (round(ours[k], 4), round(ref[k], 4))
           for k in ("mean_shift", "mean_shift_sd", "contrast_ratio", "changed")})
    assert ks_2samp(ours["ks_mean"], ref["ks_mean"]).pvalue > 1e-3
    assert ks_2samp(ours["ks_std"], ref["ks_std"]).pvalue > 1e-3
    assert abs(ours["changed"] - ref["changed"]) < 0.05  # 1 - 0.5^4 of the draws change the image


@pytest.mark.parametrize("seed", range(12))
def test_mmseg_pipeline_equals_the_reference_draw_for_draw(seed: int) -> None:
    """Resize size, crop (with cat_max_ratio), flip, distortion, normalisation and padding, end to end."""
    from hardseg.data.transforms import MMSegTrainTransform

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    seg = np.kron(rng.integers(0, 4, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4), np.int64))[:h, :w].astype(np.uint8)
    seg[:, : w // 3] = 255 if seed % 2 else 0  # an ignored (or one-class) band: crops there are redrawn
    crop, img_scale = (32, 40), (None if seed % 3 else (64, 48))
    np.random.seed(seed)
    ref_img, ref_seg = _mm_pipeline(rgb, seg, crop, (0.5, 2.0), img_scale, 0.75, photometric=True)
    tf = MMSegTrainTransform(crop, ratio_range=(0.5, 2.0), img_scale=img_scale, cat_max_ratio=0.75,
                             photometric=True, draws=_NumpyDraws(seed))
    img, m = tf(rgb, seg)
    assert img.shape == (3, *crop) and m.dtype == torch.int64
    assert np.array_equal(m.numpy(), ref_seg)
    np.testing.assert_allclose(img.numpy(), ref_img, atol=2e-5)  # 1/255-scaled vs 0..255 normalisation


def test_rescale_sizes_equal_mmcv_arithmetic() -> None:
    from hardseg.data.transforms import sample_resize

    for seed in range(300):
        rng = np.random.default_rng(seed)
        h, w = int(rng.integers(8, 3000)), int(rng.integers(8, 3000))
        img_scale = None if seed % 2 else (2048, 1024)
        np.random.seed(seed)
        ref = _mm_resize_size(np.empty((h, w, 0)), img_scale, (0.5, 2.0))
        assert sample_resize(_NumpyDraws(seed), w, h, img_scale, (0.5, 2.0)) == ref
    # Cityscapes at ratio 1: 2048x1024 stays 2048x1024; at 0.5-2.0 the short side spans 512-2048
    assert sample_resize(_NumpyDraws(0), 2048, 1024, (2048, 1024), (1.0, 1.0)) == (2048, 1024)


def test_cat_max_ratio_on_a_cityscapes_tree(tmp_path) -> None:
    """Crops redrawn by cat_max_ratio on the fixture Cityscapes tree: the reference's corners and counts."""
    from fixture_trees import cityscapes

    from hardseg.config import DataConfig
    from hardseg.data import build_source
    from hardseg.data.transforms import cat_max_ratio_crop

    root = cityscapes(tmp_path / "cs", splits=("train",), n=4)
    source = build_source(DataConfig(dataset="cityscapes", root=str(root)), "train")
    masks = [source.load(i)[1] for i in range(len(source))]
    crop, n, redrawn, exhausted, total = (16, 16), 400, 0, 0, 0
    for k in range(n):
        mask = masks[k % len(masks)]
        np.random.seed(k)
        _, _, bbox, ref_redraws = _mm_random_crop(np.empty(mask.shape + (0,)), mask, crop, 0.75)
        y, x, redraws = cat_max_ratio_crop(_NumpyDraws(k), torch.from_numpy(mask), crop, 0.75)
        assert (y, x, redraws) == (bbox[0], bbox[2], ref_redraws)
        redrawn += redraws > 0
        exhausted += redraws == 10
        total += redraws
    print(f"cityscapes fixture (32x64, crop 16x16, cat_max_ratio 0.75): {redrawn / n:.3f} of crops redrawn, "
          f"{exhausted / n:.3f} after 10 redraws, {total / n:.2f} redraws per crop")
    assert 0 < redrawn < n


def test_mmseg_pipeline_from_the_config_on_a_cityscapes_tree(tmp_path) -> None:
    """data.augment.pipeline=mmseg through build_dataset: crop-sized samples, reproducible by torch seed."""
    from fixture_trees import cityscapes

    from hardseg.config import load_config
    from hardseg.data import build_dataset
    from hardseg.data.transforms import MMSegTrainTransform
    from hardseg.errors import ConfigError

    root = cityscapes(tmp_path / "cs", splits=("train",), n=2)
    cfg = load_config(None, ["data.dataset=cityscapes", f"data.root={root}", "data.augment.pipeline=mmseg",
                             "data.augment.img_scale=[64,32]", "data.augment.scale=[0.5,2.0]",
                             "data.augment.crop=[24,40]", "data.augment.cat_max_ratio=0.75",
                             "data.augment.photometric=true"])
    ds = build_dataset(cfg.data, "train", train=True)
    assert isinstance(ds.transform, MMSegTrainTransform)

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [t for i in range(len(ds)) for t in ds[i]]

    a, b = draw(1), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].shape == (3, 24, 40) and a[1].shape == (24, 40)
    for bad, needle in (("data.augment.photometric=true", "set data.augment.pipeline=mmseg"),
                        ("data.augment.pipeline=mmseg", "needs a crop")):
        with pytest.raises(ConfigError, match=needle):
            load_config(None, [bad])

"""The procedural hard-pixel benchmark: determinism, recipe, shifts, atomic generation, dataset API."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from hardseg.config import DataConfig, SyntheticConfig
from hardseg.data import (
    available_splits,
    build_dataset,
    class_pixel_frequencies,
    dataset_info,
)
from hardseg.data import synthetic as syn
from hardseg.data.shifts import apply_shift
from hardseg.errors import DataError

SMALL = SyntheticConfig(size=64, n_train=40, n_val=12, n_shift=8, seed=0)
TINY = SyntheticConfig(size=32, n_train=6, n_val=4, n_shift=3, seed=0)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return syn.ensure_synthetic(tmp_path_factory.mktemp("syn"), SMALL)


def _hashes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    src = syn.SyntheticSource(path, split)
    images, masks = src._open()
    return np.asarray(images), np.asarray(masks[: len(src)])


# ---------------------------------------------------------------- files


def test_layout_meta_and_memmaps(small_set: Path) -> None:
    assert small_set.name == "synthetic-s64-n40-12-8-seed0"
    meta = json.loads((small_set / "meta.json").read_text())
    assert meta["format_version"] == syn.FORMAT_VERSION
    assert meta["params"] == {"size": 64, "n_train": 40, "n_val": 12, "n_shift": 8, "seed": 0}
    assert list(meta["splits"]) == list(syn.SPLITS)
    assert len(syn.SPLITS) == 2 + 20 + 1 and "fog-5" in syn.SPLITS and "target" in syn.SPLITS
    assert meta["info"]["class_names"] == list(syn.CLASS_NAMES)
    img = np.load(small_set / "train_images.npy", mmap_mode="r")
    msk = np.load(small_set / "train_masks.npy", mmap_mode="r")
    assert isinstance(img, np.memmap) and img.dtype == np.uint8 and img.shape == (40, 64, 64, 3)
    assert msk.dtype == np.uint8 and msk.shape == (40, 64, 64)
    assert np.load(small_set / "fog-3_images.npy", mmap_mode="r").shape == (8, 64, 64, 3)
    assert int(np.asarray(msk).max()) < len(syn.CLASS_NAMES)
    assert not list(small_set.parent.glob(".*tmp-*")), "temporary folders must be gone"


def test_same_seed_identical_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = syn.generate_synthetic(tmp_path / "a", TINY, workers=1)
    b = syn.generate_synthetic(tmp_path / "b", TINY, workers=2)  # process count must not matter
    c = syn.generate_synthetic(tmp_path / "c", TINY.model_copy(update={"seed": 1}))
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert set(ha) == set(hc)
    differing = [k for k in ha if k.endswith(".npy") and ha[k] != hc[k]]
    assert len(differing) == len([k for k in ha if k.endswith(".npy")])


# ---------------------------------------------------------------- recipe


def test_class_pixel_shares_follow_the_recipe(small_set: Path) -> None:
    meta = json.loads((small_set / "meta.json").read_text())
    counts = np.array(meta["class_pixel_counts"]["train"], dtype=float)
    _, masks = _split(small_set, "train")
    assert (counts == np.bincount(masks.ravel(), minlength=7)).all()
    share = counts / counts.sum()
    large = share[syn.REGION_A] + share[syn.REGION_B]
    poly = share[syn.POLYGON_A] + share[syn.POLYGON_B]
    print(f"\nshares: large {large:.3f} polygons {poly:.3f} thin {share[syn.THIN]:.4f} "
          f"small {share[syn.SMALL]:.4f} background {share[syn.BACKGROUND]:.3f}")
    assert 0.50 <= large <= 0.70
    assert 0.22 <= poly <= 0.38
    assert 0.01 <= share[syn.THIN] <= 0.035
    assert 0.01 <= share[syn.SMALL] <= 0.035
    assert 0.02 <= share[syn.BACKGROUND] <= 0.12
    # every class occurs in the training set, the rare ones in most images
    per_image = np.stack([np.bincount(m.ravel(), minlength=7) for m in masks])
    assert (per_image[:, syn.THIN] > 0).mean() >= 0.8
    assert (per_image[:, syn.SMALL] > 0).mean() >= 0.8


def test_thin_structures_are_one_to_two_pixels_wide(small_set: Path) -> None:
    from skimage.morphology import skeletonize

    _, masks = _split(small_set, "train")
    thin = masks == syn.THIN
    area = skel = survive = 0
    for t in thin:
        area += int(t.sum())
        skel += int(skeletonize(t).sum())
        # a 3x3 opening keeps only pixels inside a 3-px-wide patch of thin class
        survive += int(ndimage.binary_opening(t, np.ones((3, 3))).sum())
    width = area / skel
    print(f"\nthin: mean width {width:.2f} px, 3x3-opening survivors {survive / area:.3%}")
    assert 1.0 <= width <= 2.2
    assert survive / area < 0.05
    # long and connected: most thin pixels lie in components at least 8 px long
    long_pixels = 0
    for t in thin:
        lab, n = ndimage.label(t, np.ones((3, 3)))
        for sl in ndimage.find_objects(lab):
            extent = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            if extent >= 8:
                long_pixels += int((lab[sl] > 0).sum())
    assert long_pixels / area > 0.85


def test_small_objects_have_radius_one_to_three(small_set: Path) -> None:
    _, masks = _split(small_set, "train")
    areas = []
    for m in masks:
        lab, n = ndimage.label(m == syn.SMALL, np.ones((3, 3)))
        areas += list(np.bincount(lab.ravel())[1:])
    areas = np.array(areas)
    print(f"\nsmall objects: {len(areas)} components, median area {np.median(areas):.0f} px, max {areas.max()}")
    assert len(areas) >= 3 * len(masks)
    assert np.mean(areas <= 30) >= 0.95  # pi * 3^2 = 28 px (touching pairs may merge)
    assert 3 <= np.median(areas) <= 20


def test_boundary_pixels_are_area_mixed() -> None:
    """A straight edge off the 4x4 grid gives a column of intermediate colours, but a crisp mask."""
    n = syn.FACTOR * 64
    lab = np.full((n, n), syn.REGION_A, dtype=np.uint8)
    lab[:, 4 * 30 + 2 :] = syn.POLYGON_B  # the edge splits final column 30 in half
    rng = np.random.default_rng(0)
    img = syn.render(lab, rng).astype(float)
    mask = syn.downsample_mask(lab)
    col = img.mean(axis=0)  # (64, 3), textures averaged over rows
    left, right, mid = col[25:29].mean(0), col[32:36].mean(0), col[30]
    ch = int(np.argmax(np.abs(left - right)))
    assert abs(left[ch] - right[ch]) > 40
    frac = (mid[ch] - left[ch]) / (right[ch] - left[ch])
    assert 0.3 < frac < 0.7, frac  # half-and-half mix
    assert (mask[:, :30] == syn.REGION_A).all() and (mask[:, 30:] == syn.POLYGON_B).all()


def test_generated_boundaries_have_intermediate_colours(small_set: Path) -> None:
    """On real layouts, pixels at a region/polygon boundary sit between their two sides."""
    images, masks = _split(small_set, "val")
    between = total = 0
    for img, m in zip(images.astype(float), masks):
        a, b, c = m[:, :-2], m[:, 1:-1], m[:, 2:]
        edge = (a != c) & (b == c)  # the boundary pixel b is labelled like its right side
        ys, xs = np.nonzero(edge)
        for y, x in zip(ys, xs):
            left, mid, right = img[y, x], img[y, x + 1], img[y, x + 2]
            if np.abs(left - right).max() < 60:
                continue
            total += 1
            lo, hi = np.minimum(left, right), np.maximum(left, right)
            if ((mid > lo + 5) & (mid < hi - 5)).any():
                between += 1
    assert total > 100
    assert between / total > 0.3


def test_classes_share_colours_so_shape_matters() -> None:
    assert syn._GROUP_OF_CLASS[syn.THIN] == syn._GROUP_OF_CLASS[syn.POLYGON_A]
    assert syn._GROUP_OF_CLASS[syn.SMALL] == syn._GROUP_OF_CLASS[syn.POLYGON_B]


# ---------------------------------------------------------------- shifts


def test_shifted_sets_share_val_masks_and_differ_in_images(small_set: Path) -> None:
    val_images, val_masks = _split(small_set, "val")
    for split in (*syn.SHIFT_SPLITS, "target"):
        images, masks = _split(small_set, split)
        assert images.shape == (8, 64, 64, 3)
        assert np.array_equal(masks, val_masks[:8]), split
        diff = np.abs(images.astype(int) - val_images[:8].astype(int)).mean()
        assert diff > 0.5, (split, diff)
    # target = same layouts, other appearance: a large change
    t_images, _ = _split(small_set, "target")
    assert np.abs(t_images.astype(int) - val_images[:8].astype(int)).mean() > 20


def _contrast(images: np.ndarray) -> float:
    return float(images.astype(float).mean(axis=3).std(axis=(1, 2)).mean())


def test_shift_severities_are_monotone(small_set: Path) -> None:
    val, _ = _split(small_set, "val")
    val = val[:8]
    fog = [_contrast(_split(small_set, f"fog-{s}")[0]) for s in range(1, 6)]
    print("\nfog contrast:", [round(c, 1) for c in [_contrast(val), *fog]])
    assert _contrast(val) > fog[0] and all(a > b for a, b in zip(fog, fog[1:]))
    night = [_split(small_set, f"night-{s}")[0].mean() for s in range(1, 6)]
    assert val.mean() > night[0] and all(a > b for a, b in zip(night, night[1:]))
    noise = [np.abs(_split(small_set, f"noise-{s}")[0].astype(float) - val).mean() for s in range(1, 6)]
    assert all(a < b for a, b in zip(noise, noise[1:]))

    def sharpness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(float), axis=2)).mean())

    blur = [sharpness(_split(small_set, f"blur-{s}")[0]) for s in range(1, 6)]
    assert sharpness(val) > blur[0] and all(a > b for a, b in zip(blur, blur[1:]))


def test_fog_follows_the_scattering_model() -> None:
    clean = np.full((1, 16, 16, 3), 40, dtype=np.uint8)
    fogged = apply_shift(clean, "fog", 5, seed=0).astype(float)
    # top (far) is closer to the airlight than the bottom (near)
    assert fogged[0, 0].mean() > fogged[0, -1].mean() > 40
    assert fogged.max() <= 215 + 1


def test_shifts_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    for kind in ("fog", "night", "noise", "blur"):
        whole = apply_shift(imgs, kind, 3, seed=5)
        parts = np.concatenate([apply_shift(imgs[:2], kind, 3, seed=5), apply_shift(imgs[2:], kind, 3, seed=5, start=2)])
        assert np.array_equal(whole, parts), kind


# ---------------------------------------------------------------- generation is atomic


def test_folder_without_meta_is_not_complete_and_is_regenerated(tmp_path: Path) -> None:
    partial = tmp_path / syn.dataset_dirname(TINY)
    partial.mkdir()
    (partial / "train_images.npy").write_bytes(b"half written")
    assert not syn.is_complete(partial, TINY)
    path = syn.ensure_synthetic(tmp_path, TINY)
    assert path == partial and syn.is_complete(path, TINY)
    assert np.load(path / "train_images.npy").shape == (6, 32, 32, 3)


def test_interrupted_generation_leaves_nothing_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "apply_shift", boom)
    with pytest.raises(KeyboardInterrupt):
        syn.generate_synthetic(tmp_path, TINY)
    assert not (tmp_path / syn.dataset_dirname(TINY)).exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_meta_mismatch_or_version_change_triggers_regeneration(tmp_path: Path) -> None:
    path = syn.ensure_synthetic(tmp_path, TINY)
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = -1
    (path / "meta.json").write_text(json.dumps(meta))
    assert not syn.is_complete(path)
    syn.ensure_synthetic(tmp_path, TINY)
    assert syn.is_complete(path, TINY)


def test_concurrent_ensure_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = syn.generate_synthetic

    def counting(root, cfg):
        calls.append(1)
        time.sleep(0.2)
        return real(root, cfg)

    monkeypatch.setattr(syn, "generate_synthetic", counting)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(syn.ensure_synthetic(tmp_path, TINY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and syn.is_complete(results[0], TINY)


def test_generate_command_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = syn.generate_command(tmp_path, TINY)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert str(path) in out[0] and "train 6" in out[0] and "val 4" in out[0] and " s" in out[0]
    syn.generate_command(tmp_path, TINY)
    assert "exists" in capsys.readouterr().out


# ---------------------------------------------------------------- dataset API


def test_build_dataset_items_and_errors(small_set: Path) -> None:
    cfg = DataConfig(root=str(small_set.parent), synthetic=SMALL)
    ds = build_dataset(cfg, "train", train=True)
    assert len(ds) == 40 and ds.info.num_classes == 7 and ds.info is dataset_info(cfg)
    img, mask = ds[0]
    assert img.dtype == torch.float32 and img.shape == (3, 64, 64)
    assert mask.dtype == torch.int64 and mask.shape == (64, 64)
    val = build_dataset(cfg, "fog-3", train=False)
    assert len(val) == 8
    _, vm = val[2]
    assert torch.equal(vm, torch.from_numpy(_split(small_set, "val")[1][2].astype(np.int64)))
    with pytest.raises(DataError, match="available: train, val, fog-1"):
        build_dataset(cfg, "fog-9", train=False)
    assert available_splits(cfg) == list(syn.SPLITS)
    freq = class_pixel_frequencies(cfg)
    assert freq.dtype == np.int64 and freq.sum() == 40 * 64 * 64
    assert np.array_equal(freq, class_pixel_frequencies(ds))
    ds.validate()
    # the dataset pickles without its memory maps (DataLoader workers reopen them)
    import pickle

    plain = build_dataset(cfg, "train", train=False)
    plain[0]  # opens the memory maps
    clone = pickle.loads(pickle.dumps(plain))
    assert clone.source._images is None
    assert torch.equal(clone[3][1], plain[3][1]) and torch.equal(clone[3][0], plain[3][0])


def test_info_hierarchy_is_consistent() -> None:
    info = syn.SYNTHETIC_INFO
    assert info.num_classes >= 6
    assert len(info.hierarchy) == 2 and [len(n) for n in info.hierarchy_names] == [2, 4]
    # a finer level never merges classes that a coarser level separates
    coarse, mid = info.hierarchy
    for a in range(info.num_classes):
        for b in range(info.num_classes):
            if mid[a] == mid[b]:
                assert coarse[a] == coarse[b]
    assert info.thin_classes == (syn.THIN,) and info.small_classes == (syn.SMALL,)


def test_default_size_set_is_complete_with_its_class_shares(tmp_path: Path) -> None:
    """The default configuration: complete, with the documented class shares (prints its time; no limit here)."""
    cfg = SyntheticConfig()
    t0 = time.perf_counter()
    path = syn.generate_synthetic(tmp_path, cfg)
    seconds = time.perf_counter() - t0
    meta = json.loads((path / "meta.json").read_text())
    share = np.array(meta["class_shares"]["train"])
    print(
        f"\ndefault synthetic set ({cfg.n_train}/{cfg.n_val}/{cfg.n_shift} x {cfg.size}px) generated in {seconds:.1f} s; "
        f"train shares: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(syn.CLASS_NAMES, share))
    )
    assert syn.is_complete(path, cfg)
    large, poly = share[1] + share[2], share[3] + share[4]
    assert 0.55 <= large <= 0.65 and 0.26 <= poly <= 0.34
    assert 0.015 <= share[5] <= 0.03 and 0.015 <= share[6] <= 0.03

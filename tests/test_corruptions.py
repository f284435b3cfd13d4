"""ImageNet-C corruptions: against the imagecorruptions package's outputs, deterministic across runs and
DDP shards, as evaluation domains, and mPC / rPC."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from hardseg.data.corruptions import CORRUPTIONS, FAMILIES, corrupt
from hardseg.data.domains import parse_domain, parse_domains
from hardseg.errors import DataError
from hardseg.robustness import robustness

REF = Path(__file__).parent / "data" / "corruptions_ref.npz"
SEED, FROST_STEP = 1234, 7  # tests/data/make_corruption_fixture.py


@pytest.fixture
def frost_folder(tmp_path, monkeypatch):
    """The fixture's six frost-like textures, byte for byte, under the reference's file names, as HARDSEG_FROST_DIR."""
    ref = np.load(REF)
    folder = tmp_path / "frost"
    folder.mkdir()
    for key in ref.files:
        if key.startswith("frost_file:"):
            (folder / key.split(":", 1)[1]).write_bytes(ref[key].tobytes())
    monkeypatch.setenv("HARDSEG_FROST_DIR", str(folder))
    return folder


def test_matches_the_imagecorruptions_package(frost_folder):
    """Reference outputs of imagecorruptions 1.1.2 (tests/data/make_corruption_fixture.py); the random ones
    were drawn after np.random.seed(SEED + k) (frost: + FROST_STEP * severity, so that its draws pick each
    of the five photographs it draws from), so a RandomState of that seed draws the same numbers here.

    Spatter's OpenCV steps (Canny, 5x5 chamfer distance transform, box filters, equalizeHist, filter2D)
    are written out exactly: identical outputs. Frost's ``cv2.resize`` (bicubic, fixed point in OpenCV)
    is re-implemented in float64: at most one grey level apart on the resized photograph (on < 0.02 % of
    the values, measured on 30 random sizes), so at most one level after the blend; identical here."""
    ref = np.load(REF)
    cases = [k for k in ref.files if k != "images" and not k.startswith("frost_file:")]
    assert len(cases) == 22 and {k.rsplit("-", 1)[0] for k in cases} >= {"spatter", "frost"}
    for key in cases:
        name, sev = key.rsplit("-", 1)
        for k, img in enumerate(ref["images"]):
            seed = SEED + k + (FROST_STEP * int(sev) if name == "frost" else 0)
            ours = corrupt(img, name, int(sev), rng=np.random.RandomState(seed)).astype(int)
            diff = np.abs(ours - ref[key][k].astype(int))
            # float32 sums (motion blur) and frost's fixed-point resize may flip a truncation:
            # at most 1 level on < 1 % of the values
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (key, k, diff.max(), (diff > 0).mean())
            assert np.abs(ref[key][k].astype(int) - img).mean() > 1  # every case changes the image


def test_spatter_opencv_steps_by_their_definition():
    from hardseg.data.corruptions import _canny, _chamfer_distance, _equalize_hist

    img = np.zeros((9, 12), np.uint8)
    img[3:7, 4:9] = 200  # a bright block: its Canny edges are the block's border pixels and their neighbours
    edges = _canny(img, 50, 150)
    assert edges.any() and not edges[0].any() and not edges[:, 0].any() and not edges[5, 6]
    zero = np.zeros((7, 7), bool)
    zero[3, 3] = True
    d = _chamfer_distance(zero)
    assert d[3, 3] == 0 and d[3, 5] == 2 and d[4, 4] == np.float32(1.4) and d[4, 5] == np.float32(2.1969)
    assert _equalize_hist(np.array([[3, 3, 5, 9]], np.uint8)).tolist() == [[0, 0, 128, 255]]


def test_frost_without_its_photographs_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from hardseg.platform.cli import main as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARDSEG_FROST_DIR", str(tmp_path / "nowhere"))
    rc = cli(["train", "--set", "data.eval_domains=[corrupt:frost-3]", "--set", "train.epochs=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: evaluation domain 'corrupt:frost-3'")
    assert "frost1.png, frost2.png, frost3.png, frost4.jpg, frost5.jpg, frost6.jpg" in err
    assert str(tmp_path / "nowhere") in err and "HARDSEG_FROST_DIR" in err
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no data generated
    monkeypatch.delenv("HARDSEG_FROST_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=str(tmp_path / "cache" / "hardseg" / "frost")):
        parse_domain("corrupt:frost-1")


def test_the_others_by_their_definition():
    img = np.load(REF)["images"][0]
    out = corrupt(img, "impulse_noise", 5, 7).astype(int)  # 27 % of the values set to 0 or 255
    changed = (out != img) & ((out == 0) | (out == 255))
    assert 0.2 < changed.mean() < 0.3
    blur = corrupt(img, "gaussian_blur", 2)
    want = np.uint8(np.clip(ndimage.gaussian_filter(img / 255.0, (2, 2, 0), mode="nearest"), 0, 1) * 255)
    np.testing.assert_array_equal(blur, want)
    glass = corrupt(img, "glass_blur", 1, 3)
    assert glass.shape == img.shape and np.abs(glass.astype(int) - img).mean() > 3


def test_every_corruption_and_severity_is_deterministic_and_grows(frost_folder):
    img = np.load(REF)["images"][1]
    assert sorted(n for f in FAMILIES.values() for n in f) == sorted(CORRUPTIONS)
    for name in CORRUPTIONS:
        diffs = []
        for sev in (1, 3, 5):
            a, b = corrupt(img, name, sev, 11), corrupt(img, name, sev, 11)
            assert a.dtype == np.uint8 and a.shape == img.shape
            np.testing.assert_array_equal(a, b)
            diffs.append(np.abs(a.astype(int) - img).mean())
        assert diffs[2] > diffs[0] or name == "saturate", (name, diffs)  # saturate: 0.3x, 0.1x, 2x, 5x, 20x


def _digests(root: str, rank: int, world: int) -> dict[int, str]:
    from hardseg.config import DataConfig
    from hardseg.data.domains import build_domain
    from hardseg.trainables.loaders import ShardSampler

    ds = build_domain(DataConfig(root=root, synthetic={"size": 32, "n_train": 64, "n_val": 32, "n_shift": 16}),
                      "corrupt:gaussian_noise-4")
    return {i: hashlib.sha256(ds[i][0].numpy().tobytes()).hexdigest() for i in ShardSampler(len(ds), rank, world)}


def test_corrupted_domain_is_identical_across_runs_and_ranks(data_root):
    whole = _digests(str(data_root), 0, 1)
    assert len(set(whole.values())) == len(whole) == 32  # every image its own noise
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_corruptions import _digests; print(json.dumps(_digests({str(data_root)!r}, 1, 2)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    rank1 = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    rank0 = _digests(str(data_root), 0, 2)
    assert sorted(rank0) == list(range(0, 32, 2)) and sorted(rank1) == list(range(1, 32, 2))
    assert {**rank0, **rank1} == whole


def test_domain_specs_and_mpc():
    d = parse_domain("corrupt:gaussian_noise-3")
    assert (d.name, d.dataset, d.split, d.corruption) == ("corrupt.gaussian_noise-3", None, "val", ("gaussian_noise", 3))
    assert parse_domain("corrupt:fog-2:target").name == "corrupt.fog-2_target"
    assert [x.name for x in parse_domains(["fog-3", "corrupt:fog-3"])] == ["fog-3", "corrupt.fog-3"]
    for bad in ("corrupt:frosty-3", "corrupt:fog-6", "corrupt:fog"):
        with pytest.raises(DataError, match="corrupt:<name>-<severity>"):
            parse_domain(bad)
    m = {"corrupt.gaussian_noise-1": 0.6, "corrupt.gaussian_noise-3": 0.4, "corrupt.contrast-2": 0.5,
         "corrupt.motion_blur-5": 0.3, "fog-3": 0.1}
    r = robustness({f"{k}/miou": v for k, v in m.items()}, clean=0.8)
    assert r["robustness/mPC/miou"] == pytest.approx((0.5 + 0.5 + 0.3) / 3)  # the synthetic fog-3 is no corruption
    assert r["robustness/rPC/miou"] == pytest.approx((0.5 + 0.5 + 0.3) / 3 / 0.8)
    assert r["robustness/corruption_noise/miou"] == pytest.approx(0.5 / 0.8)
    assert r["robustness/corruption_blur/miou"] == pytest.approx(0.3 / 0.8)
    assert r["robustness/corrupt.gaussian_noise/miou"] == pytest.approx(0.625) and r["robustness/fog/miou"] == 0.125


# ---------------------------------------------------------------- the corruption cache (hardseg data corrupt)

def _cache_tree(tmp_path):
    from fixture_trees import cityscapes

    return cityscapes(tmp_path / "cs", n=3)


def _one_line_exit_2(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (rc, err)
    return err


def test_cached_images_equal_the_on_the_fly_ones_byte_for_byte(tmp_path, capsys):
    import json

    from hardseg.config import DataConfig
    from hardseg.data import build_source
    from hardseg.data.corruption_cache import MANIFEST, CachedCorruptedSource, code_version
    from hardseg.data.corruptions import CorruptedSource
    from hardseg.data.domains import build_domain
    from hardseg.platform.cli import main as cli

    root = _cache_tree(tmp_path)
    names = ["gaussian_noise", "glass_blur", "zoom_blur", "saturate"]
    rc = cli(["data", "corrupt", str(root), "--dataset", "cityscapes", "--corruptions", *names,
              "--severities", "2-3", "5", "--workers", "2"])
    assert rc == 0, capsys.readouterr().err
    cache = tmp_path / "cs-corrupted"  # found beside the dataset without configuration
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["dataset"] == "cityscapes" and manifest["code_version"] == code_version()
    assert manifest["splits"]["val"]["sets"] == sorted(f"{n}-{s}" for n in names for s in (2, 3, 5))
    assert len(manifest["files"]) == 4 * 3 * 3 and len(manifest["splits"]["val"]["sources"]) == 3
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((cache / rel).read_bytes()).hexdigest() == digest
    cfg = DataConfig(dataset="cityscapes", root=str(root))
    base = build_source(cfg, "val")
    for name in names:
        for sev in (2, 3, 5):
            ds = build_domain(cfg, f"corrupt:{name}-{sev}")
            assert isinstance(ds.source, CachedCorruptedSource)
            fly = CorruptedSource(base, name, sev)
            for i in range(len(base)):
                (img, mask), (want, want_mask) = ds.source.load(i), fly.load(i)
                assert img.dtype == want.dtype and img.shape == want.shape and img.tobytes() == want.tobytes()
                assert np.array_equal(mask, want_mask)
    # a set the cache does not hold is generated on the fly; an explicit data.corruption_cache is used too
    assert not isinstance(build_domain(cfg, "corrupt:gaussian_noise-1").source, CachedCorruptedSource)
    moved = tmp_path / "elsewhere"
    cache.rename(moved)
    assert not isinstance(build_domain(cfg, "corrupt:glass_blur-2").source, CachedCorruptedSource)
    named = cfg.model_copy(update={"corruption_cache": str(moved)})
    assert isinstance(build_domain(named, "corrupt:glass_blur-2").source, CachedCorruptedSource)


def test_corruption_cache_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import json

    from hardseg.config import DataConfig
    from hardseg.data.corruption_cache import MANIFEST, _verified, check_caches
    from hardseg.data.domains import build_domain, parse_domains
    from hardseg.platform.cli import main as cli

    root = _cache_tree(tmp_path)
    err = _one_line_exit_2(capsys, cli(["data", "corrupt", str(tmp_path / "nowhere"), "--dataset", "cityscapes"]))
    assert str(tmp_path / "nowhere") in err and "does not exist" in err
    err = _one_line_exit_2(capsys, cli(["data", "corrupt", str(root), "--dataset", "cityscapes",
                                        "--corruptions", "gaussian_noise", "frosty"]))
    assert "unknown corruption 'frosty'" in err and "gaussian_noise" in err
    err = _one_line_exit_2(capsys, cli(["data", "corrupt", str(root), "--dataset", "cityscapes",
                                        "--corruptions", "contrast", "--severities", "0-6"]))
    assert "--severities" in err
    assert not (tmp_path / "cs-corrupted").exists()  # nothing written for bad input

    assert cli(["data", "corrupt", str(root), "--dataset", "cityscapes", "--corruptions", "contrast",
                "--severities", "2", "--workers", "1"]) == 0
    cache = tmp_path / "cs-corrupted"
    good = json.loads((cache / MANIFEST).read_text())
    cfg = DataConfig(dataset="cityscapes", root=str(root))
    domains = parse_domains(["corrupt:contrast-2"])
    for change, words in (({"dataset": "ade20k"}, "made for dataset 'ade20k', not 'cityscapes'"),
                          ({"code_version": "0.0.1+000000000000"}, "made by corruption code 0.0.1+000000000000")):
        (cache / MANIFEST).write_text(json.dumps({**good, **change}))
        _verified.cache_clear()
        with pytest.raises(DataError, match=re.escape(words)) as info:
            check_caches(cfg, domains)
        assert len(str(info.value).splitlines()) == 1 and str(cache) in str(info.value)
        with pytest.raises(DataError, match=re.escape(words)):
            build_domain(cfg, "corrupt:contrast-2")
        # the CLI refuses to add to it, in one line
        err = _one_line_exit_2(capsys, cli(["data", "corrupt", str(root), "--dataset", "cityscapes",
                                            "--corruptions", "contrast", "--severities", "3"]))
        assert words in err
    (cache / MANIFEST).write_text(json.dumps(good))
    _verified.cache_clear()
    check_caches(cfg, domains)
    image = next((root / "leftImg8bit" / "val").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")  # another file than the cache was made from
    _verified.cache_clear()
    with pytest.raises(DataError, match=r"made for other files of split 'val' \(image .* has changed\)"):
        check_caches(cfg, domains)
    named = cfg.model_copy(update={"corruption_cache": str(tmp_path / "none")})
    with pytest.raises(DataError, match="data.corruption_cache: no manifest.json in"):
        build_domain(named, "corrupt:contrast-2")


# ---------------------------------------------------------------- the faster forms equal the reference's (issue 27)

def _glass_blur_sequential(x, severity, rng):
    """The reference's glass blur as hardseg had it before issue 27: one Python step per pixel swap."""
    from hardseg.data.corruptions import _f, _gaussian

    sigma, delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    x = np.uint8(_gaussian(_f(x), sigma) * 255)
    h, w = x.shape[:2]
    for _ in range(iterations):
        rows, cols = list(range(h - delta, delta, -1)), list(range(w - delta, delta, -1))
        offsets = np.floor(rng.uniform(-delta, delta, size=(len(rows), len(cols), 2))).astype(np.int64)
        for a, r in enumerate(rows):
            for b, col in enumerate(cols):
                dx, dy = offsets[a, b]
                x[r, col] = x[r + dy, col + dx]
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def test_fast_glass_zoom_brightness_saturate_equal_their_reference_forms():
    from skimage.color import hsv2rgb, rgb2hsv

    from hardseg.data.corruptions import _clipped_zoom, _f

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img[:6] = 128  # grey rows (saturation 0), ties between channels, black and white
    img[6:9, :, 1] = img[6:9, :, 0]
    img[9, :5], img[9, 5:10] = 0, 255
    for sev in (1, 2, 3, 4, 5):
        want = _glass_blur_sequential(img, sev, np.random.default_rng(sev))
        np.testing.assert_array_equal(corrupt(img, "glass_blur", sev, rng=np.random.default_rng(sev)), np.uint8(want))
        factors = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                   np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[sev - 1]
        x = _f(img).astype(np.float32)
        out = np.zeros_like(x)
        for z in factors:
            layer = _clipped_zoom(x, z)[: x.shape[0], : x.shape[1]]
            out[: layer.shape[0], : layer.shape[1]] += layer
        want = np.uint8(np.clip((x + out) / (len(factors) + 1), 0, 1) * 255)
        np.testing.assert_array_equal(corrupt(img, "zoom_blur", sev), want)
        c = (0.1, 0.2, 0.3, 0.4, 0.5)[sev - 1]
        hsv = rgb2hsv(_f(img))
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        np.testing.assert_array_equal(corrupt(img, "brightness", sev), np.uint8(np.clip(hsv2rgb(hsv), 0, 1) * 255))
        c = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[sev - 1]
        hsv = rgb2hsv(_f(img))
        hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
        np.testing.assert_array_equal(corrupt(img, "saturate", sev), np.uint8(np.clip(hsv2rgb(hsv), 0, 1) * 255))


def test_train_with_a_cache_for_other_code_is_one_line_exit_2_before_any_run(tmp_path, capsys, monkeypatch):
    import json

    from hardseg.data.corruption_cache import MANIFEST
    from hardseg.platform.cli import main as cli

    root = _cache_tree(tmp_path)
    cache = tmp_path / "made"
    assert cli(["data", "corrupt", str(root), "--dataset", "cityscapes", "--corruptions", "contrast",
                "--severities", "2", "--workers", "1", "--out", str(cache)]) == 0
    manifest = json.loads((cache / MANIFEST).read_text())
    (cache / MANIFEST).write_text(json.dumps({**manifest, "code_version": "0.0.1+000000000000"}))
    capsys.readouterr()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rc = cli(["train", "--set", "data.dataset=cityscapes", "--set", f"data.root={root}", "--set",
              "data.eval_domains=[corrupt:contrast-2]", "--set", "data.corruption_cache=../made",
              "--set", "train.epochs=1"])
    err = _one_line_exit_2(capsys, rc)
    assert f"corruption cache {cache} was made by corruption code 0.0.1+000000000000" in err
    assert list(work.iterdir()) == []  # no MLflow store, no run

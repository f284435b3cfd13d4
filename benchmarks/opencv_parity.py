"""The mmseg pipeline's OpenCV steps against OpenCV itself (issue 23), in two steps.

OpenCV is not a hardseg dependency, so the comparison runs in two environments:

    PYTHONPATH=src python benchmarks/opencv_parity.py dump /tmp/cvparity      # hardseg's outputs (torch)
    python-with-cv2 benchmarks/opencv_parity.py check /tmp/cvparity         # needs numpy + opencv only

``dump`` converts every RGB colour to HSV, every (H, S, V) back to RGB, and resizes a random image and
mask to five sizes with hardseg's functions; ``check`` computes the same with OpenCV (as mmcv calls it)
and prints how many values differ, writing benchmarks/results/opencv_parity.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SIZES = [(128, 256), (384, 768), (511, 1023), (200, 333), (640, 1280)]


def _grids() -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
    hsv = np.stack(np.meshgrid(np.arange(180, dtype=np.uint8), v, v, indexing="ij"), -1).reshape(180 * 256, 256, 3)
    return rgb, hsv


def _sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (256, 512, 3), dtype=np.uint8), rng.integers(0, 19, (256, 512), dtype=np.uint8)


def dump(out: Path) -> None:
    import torch
    from torchvision.transforms.v2 import functional as F

    from hardseg.data.transforms import hsv_to_rgb_u8, rgb_to_hsv_u8

    out.mkdir(parents=True, exist_ok=True)
    rgb, hsv = _grids()
    np.save(out / "hsv.npy", rgb_to_hsv_u8(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy())
    np.save(out / "rgb.npy", hsv_to_rgb_u8(torch.from_numpy(hsv).permute(2, 0, 1)).permute(1, 2, 0).numpy())
    img, mask = _sample()
    arrays = {}
    for h, w in SIZES:  # as MMSegTrainTransform resizes
        arrays[f"img_{h}x{w}"] = F.resize(torch.from_numpy(img).permute(2, 0, 1), [h, w], antialias=False,
                                          interpolation=F.InterpolationMode.BILINEAR).permute(1, 2, 0).numpy()
        arrays[f"mask_{h}x{w}"] = F.resize(torch.from_numpy(mask)[None], [h, w],
                                           interpolation=F.InterpolationMode.NEAREST)[0].numpy()
    np.savez(out / "resize.npz", **arrays)


def check(out: Path) -> None:
    import cv2

    rgb, hsv = _grids()
    rows = []
    ours = np.load(out / "hsv.npy")
    ref = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2HSV)
    rows.append(("BGR2HSV, every RGB colour", int((ours != ref).any(-1).sum()), rgb.shape[0] * rgb.shape[1],
                 int(np.abs(ours.astype(int) - ref).max())))
    ours = np.load(out / "rgb.npy")
    ref = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[..., ::-1]
    rows.append(("HSV2BGR, every (H, S, V)", int((ours != ref).any(-1).sum()), hsv.shape[0] * hsv.shape[1],
                 int(np.abs(ours.astype(int) - ref).max())))
    img, mask = _sample()
    z = np.load(out / "resize.npz")
    for h, w in SIZES:
        ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        d = np.abs(z[f"img_{h}x{w}"].astype(int) - ref)
        rows.append((f"bilinear image 256x512 -> {h}x{w}", int((d > 0).sum()), d.size, int(d.max())))
        ref = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        d = np.abs(z[f"mask_{h}x{w}"].astype(int) - ref)
        rows.append((f"nearest mask 256x512 -> {h}x{w}", int((d > 0).sum()), d.size, int(d.max())))
    print(f"OpenCV {cv2.__version__}, numpy {np.__version__}")
    print(f"{'step':<40} {'differing':>10} {'of':>10} {'max |d|':>8}")
    for name, n, total, mx in rows:
        print(f"{name:<40} {n:>10} {total:>10} {mx:>8}")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "opencv_parity.json").write_text(json.dumps(
        {"opencv": cv2.__version__, "rows": [dict(zip(("step", "differing", "of", "max_abs"), r)) for r in rows]},
        indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dump", "check"):
        sys.exit("usage: opencv_parity.py dump|check DIR")
    (dump if sys.argv[1] == "dump" else check)(Path(sys.argv[2]))

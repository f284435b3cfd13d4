"""Seconds per image of the corruptions issue 27 made faster, before and after, and their differences.

For each of ``--corruptions`` (default: glass_blur, zoom_blur, brightness, saturate) and severity, on a
random ``--size`` image (default 1024×2048): CPU seconds of today's ``corrupt`` and of the
implementation in ``hardseg/data/corruptions.py`` at git revision ``--before`` (default: the commit
before issue 27), the largest and mean absolute difference between the two outputs, and the largest
and mean difference of today's output from the ``imagecorruptions`` fixture
(``tests/data/corruptions_ref.npz``) where it holds that case. Prints a table and writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/corruption_speed.py \\
        --out benchmarks/results/corruption_speed.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BEFORE = "1b931a1"  # the last commit before issue 27's changes to corruptions.py
FIXTURE_SEED = 1234  # tests/data/make_corruption_fixture.py


def load_module_at(rev: str):
    """``hardseg.data.corruptions`` as it was at git revision ``rev`` (imported from a temporary file)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/hardseg/data/corruptions.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="hardseg-corruptions-")) / "corruptions_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("corruptions_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _cpu(fn) -> tuple[float, np.ndarray]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corruptions", nargs="+", default=["glass_blur", "zoom_blur", "brightness", "saturate"])
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    p.add_argument("--before", default=BEFORE, help="git revision of the implementation to compare with")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "corruption_speed.json")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from hardseg.data import corruptions as now

    before = load_module_at(args.before)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cityscapes_files import scene

    image, _ = scene(*args.size, np.random.default_rng(0))  # a street-like scene: flat regions, edges, noise
    ref = np.load(REPO / "tests" / "data" / "corruptions_ref.npz")
    rows = {}
    for name in args.corruptions:
        for sev in args.severities:
            t_before, a = _cpu(lambda: before.corrupt(image, name, sev, 5))
            t_now, b = _cpu(lambda: now.corrupt(image, name, sev, 5))
            d = np.abs(a.astype(np.int64) - b)
            row = {"before_s": t_before, "after_s": t_now, "speedup": t_before / max(t_now, 1e-9),
                   "vs_before_max": int(d.max()), "vs_before_mean": float(d.mean())}
            key = f"{name}-{sev}"
            if key in ref.files:
                diffs = np.concatenate([np.abs(now.corrupt(img, name, sev, rng=np.random.RandomState(FIXTURE_SEED + k))
                                               .astype(np.int64) - ref[key][k]).ravel()
                                        for k, img in enumerate(ref["images"])])
                row.update(fixture_max=int(diffs.max()), fixture_mean=float(diffs.mean()))
            rows[key] = row
            print(f"{key:<14} before {t_before:7.3f} s  after {t_now:7.3f} s  x{row['speedup']:5.1f}  "
                  f"vs before max {row['vs_before_max']} mean {row['vs_before_mean']:.4f}"
                  + (f"  vs fixture max {row['fixture_max']} mean {row['fixture_mean']:.4f}" if "fixture_max" in row
                     else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "corruption_speed", "size": list(args.size),
                                    "before": args.before, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of one training sample's augmentation: the torchvision pipeline vs the mmseg one (issue 23).

    PYTHONPATH=src python benchmarks/augment_cost.py

A Cityscapes-sized 1024x2048 image and mask, one torch thread (a loader worker's), 769x769 crops
from a 0.5-2.0 resize of 2049x1025 as the paper's rows; milliseconds per sample (median of 7) and the
ratio to the torchvision pipeline measured in the same run. Writes benchmarks/results/augment_cost.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from hardseg.data.transforms import MMSegTrainTransform, TrainTransform


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (1024, 2048)).astype(np.uint8)
    pipelines = {
        "torchvision (scale 0.5-2.0, crop 769)": TrainTransform(scale=(0.5, 2.0), crop=769),
        "mmseg, no PhotoMetricDistortion": MMSegTrainTransform(769, (0.5, 2.0), (2049, 1025), 0.75),
        "mmseg, PhotoMetricDistortion": MMSegTrainTransform(769, (0.5, 2.0), (2049, 1025), 0.75, photometric=True),
    }
    rows = {}
    for name, tf in pipelines.items():
        torch.manual_seed(0)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            tf(image, mask)
            times.append(time.perf_counter() - t0)
        rows[name] = 1000 * statistics.median(times)
    base = next(iter(rows.values()))
    print(f"{'pipeline':<40} {'ms/sample':>10} {'x torchvision':>14}")
    for name, ms in rows.items():
        print(f"{name:<40} {ms:>10.0f} {ms / base:>14.2f}")
    out = Path(__file__).parent / "results" / "augment_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"ms_per_sample": rows, "threads": 1}, indent=1))


if __name__ == "__main__":
    main()

"""Images/s of the training loader alone vs the training step, on CPU, Cityscapes-format files.

The loader is hardseg's own (:func:`hardseg.trainables.loaders.build_train_loader`): PNG decode, Cityscapes
label mapping, random scale [0.5, 2], 512×1024 crop, flip, normalisation, collation, for 0, 1 and 2
worker processes, on generated 1024×2048 files (:mod:`cityscapes_files`). The training step is
hardseg's ``train_one_epoch`` on batches already in memory (so it is the step alone), same crop and
batch, one thread per worker CPU as the loop sets it.

    python benchmarks/loader_throughput.py [--model tiny_seg] [--workers 0 1 2] [--batch 2]

Prints a table and writes JSON (default ``benchmarks/results/loader_throughput.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpu_check import REPO, loader_images_per_s, run_config  # also sets up sys.path for hardseg
from cityscapes_files import make_cityscapes
from hardseg.data import build_dataset
from hardseg.strategies.build import build_training_model
from hardseg.trainables.loaders import build_train_loader
from hardseg.trainables.loop import train_one_epoch
from hardseg.trainables.optim import build_optimizer, poly_lambda
from hardseg.trainables.settings import StepSettings


def train_images_per_s(cfg, steps: int) -> float:
    """hardseg's training step alone on ``steps`` in-memory batches: images/s of the median step."""
    torch.set_num_threads(cfg.train.num_threads or 1)
    ds = build_dataset(cfg.data, "train", train=True)
    loader, sampler = build_train_loader(cfg, ds, 0, 1, torch.device("cpu"))
    batches = [b for _, b in zip(range(steps), loader)]
    torch.manual_seed(0)
    tm, objective = build_training_model(cfg, ds.info, np.ones(ds.info.num_classes))
    opt = build_optimizer(cfg, tm)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(steps, 0.9))
    stats = train_one_epoch(tm, objective, batches, opt, sched, 0, StepSettings(torch.device("cpu")))
    return cfg.train.batch_size / stats["train/step_time_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny_seg")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--batches", type=int, default=6, help="batches timed per worker count (after the first)")
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training step")
    p.add_argument("--data", type=Path, help="folder for the generated files (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "loader_throughput.json")
    a = p.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="hardseg-loader-")
    root = a.data or Path(tmp.name) / "cityscapes"
    n = a.batch * (a.batches + 1)
    t0 = time.perf_counter()
    make_cityscapes(root, n, 1, (1024, 2048), unique=4)
    print(f"[loader] {n} files at 1024x2048 in {time.perf_counter() - t0:.1f}s", flush=True)
    s = dict(crop=(512, 1024), batch=a.batch, workers=0, threads=a.threads)
    rows = {}
    for w in a.workers:
        cfg = run_config(a.model, root, {**s, "workers": w}, ["ce"], 1)
        rows[f"loader, {w} workers"] = loader_images_per_s(cfg, torch.device("cpu"), a.batches)
        print(f"[loader] {w} workers: {rows[f'loader, {w} workers']:.2f} images/s", flush=True)
    cfg = run_config(a.model, root, s, ["ce"], 1)
    rows[f"train step {a.model}, {a.threads} thread(s)"] = train_images_per_s(cfg, a.train_steps)
    res = {"images_per_s": rows, "image": [1024, 2048], "crop": [512, 1024], "scale": [0.5, 2.0],
           "batch": a.batch, "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__}
    w = max(map(len, rows))
    print("\n".join(f"{k:<{w}}  {v:8.2f} images/s" for k, v in rows.items()))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"[loader] wrote {a.out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

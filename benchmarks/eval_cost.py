"""Evaluation cost: throughput per evaluation domain and evaluation's share of a trial.

At the demo's settings (embedded default: tiny_seg, synthetic 64×64, 200 images
per val/shifted/target set, batch 32 for evaluation, ``hardseg demo``'s
8 epochs and ``data.eval_domains: [fog-3]``) with ``--threads`` torch threads:

1. one training run in this process (``trainables.local``, no Ray), ``--epochs``
   epochs: seconds per training epoch (``train/epoch_time_s``), and the run's
   wall time minus its training epochs = what evaluation, checkpoints and
   images cost inside the loop, measured;
2. the run's best model evaluated with the loop's own ``evaluate`` on every
   domain (val, fog/night/noise/blur 1–5, target), ``--repeats`` times: images/s
   per domain (median);
3. a demo trial's evaluation time from these: ``epochs × val`` (val every epoch)
   plus each of ``data.eval_domains`` once for the best model, against
   ``epochs × epoch`` training seconds; also with every domain evaluated.

Prints a table and writes JSON (default ``benchmarks/results/eval_cost.json``).
Claim checked: evaluation is not a trial's bottleneck (its share of a demo trial
is well under the training epochs' share).

    .venv/bin/python benchmarks/eval_cost.py

``--per-image``: the cost of evaluating one Cityscapes-size image (1024×2048, 19
classes) on the CPU, with ``--threads`` torch threads (default 1 here), on
``--images`` generated Cityscapes-format files (:mod:`cityscapes_files`):

1. decoding one such PNG (the unit the others are given in);
2. ``SegMetrics.update`` for one image, today's device implementation against the
   copy of the old one kept in tests/test_metrics.py, on the fixture's labels, a
   16×16-block label map and a noise label map;
3. the forward pass of ``--model`` (whole image, no autocast);
4. corruption of each image for ``--corruptions`` × ``--severities``, CPU seconds:
   on the fly (``CorruptedSource``) against read from a cache made with
   ``hardseg data corrupt``'s code (``make_cache``, ``--workers`` processes; its
   wall time, CPU time and size are reported).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_cost.py --per-image --threads 1 \
        --corruptions all --severities 3 --out benchmarks/results/eval_cost_image.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEMO_EPOCHS = 8  # hardseg.platform.cli.DEMO_EPOCHS (not imported: keeps this script's imports light)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs of the measured training run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-root", type=Path, help="the default synthetic set (generated there when missing; "
                   "default: a temporary folder)")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/eval_cost.json "
                   "(--per-image: eval_cost_image.json)")
    p.add_argument("--per-image", action="store_true", help="one 1024x2048 image's cost (module docstring)")
    p.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    p.add_argument("--images", type=int, default=3, help="--per-image: generated val images")
    p.add_argument("--model", default="deeplabv3_resnet50", help="--per-image: the model of the forward pass "
                   "(none: skip it)")
    p.add_argument("--corruptions", nargs="+", default=["all"], help="--per-image: names or all")
    p.add_argument("--severities", nargs="+", default=["1-5"], help="--per-image: e.g. 1-5, 3")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="--per-image: cache-making processes")
    args = p.parse_args()
    if args.per_image:
        return per_image(args)
    args.out = args.out or Path(__file__).parent / "results" / "eval_cost.json"

    import torch
    from torch.utils.data import DataLoader

    from hardseg.config import load_config
    from hardseg.data import build_dataset
    from hardseg.data.synthetic import SPLITS
    from hardseg.trainables.evaluation import evaluate, load_inference_model, metrics_for
    from hardseg.trainables.local import run_local
    from hardseg.trainables.settings import StepSettings

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hardseg-evalcost-"))
    root = args.data_root or work / "data"
    cfg = load_config(None, [f"data.root={root}", f"train.epochs={args.epochs}", "ray.num_workers=1",
                             f"train.num_threads={args.threads}", "train.log_images_every=1"])
    build_dataset(cfg.data, "val", train=False)  # generate the set before timing anything

    start = time.perf_counter()
    history = run_local(cfg, work / "run", device="cpu")
    run_wall = time.perf_counter() - start
    epoch_s = [h["train/epoch_time_s"] for h in history]
    model, _ = load_inference_model(work / "run" / "checkpoint_latest" / "model_export.pt")

    batch = max(cfg.train.batch_size, 32)  # as the loop's evaluation loaders
    rows: dict[str, dict[str, float]] = {}
    for split in [s for s in SPLITS if s != "train"]:
        ds = build_dataset(cfg.data, split, train=False)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            evaluate(model, DataLoader(ds, batch_size=batch), metrics_for(ds.info), StepSettings(torch.device("cpu")))
            times.append(time.perf_counter() - t0)
        rows[split] = {"images": len(ds), "seconds": statistics.median(times),
                       "images_per_s": len(ds) / statistics.median(times)}

    epoch = statistics.median(epoch_s[1:] or epoch_s)
    train_s = DEMO_EPOCHS * epoch
    val_s = DEMO_EPOCHS * rows["val"]["seconds"]
    demo_domains = sum(rows[d]["seconds"] for d in cfg.data.eval_domains)
    all_domains = sum(r["seconds"] for s, r in rows.items() if s != "val")
    trial = {
        "epochs": DEMO_EPOCHS, "train_epoch_s": epoch, "train_s": train_s, "val_eval_s": val_s,
        "eval_domains": list(cfg.data.eval_domains), "domain_eval_s": demo_domains,
        "eval_share": (val_s + demo_domains) / (train_s + val_s + demo_domains),
        "all_domains_eval_s": all_domains,
        "all_domains_eval_share": (val_s + all_domains) / (train_s + val_s + all_domains),
    }
    measured = {"epochs": args.epochs, "wall_s": run_wall, "train_epochs_s": sum(epoch_s),
                "rest_s": run_wall - sum(epoch_s), "rest_share": (run_wall - sum(epoch_s)) / run_wall,
                "note": "rest = evaluation + checkpoints + images + setup, inside the loop"}
    result = {
        "benchmark": "eval_cost",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "settings": vars(args) | {"out": str(args.out), "data_root": str(root), "eval_batch_size": batch,
                                  "image_size": cfg.data.synthetic.size, "model": cfg.model.name},
        "domains": rows,
        "demo_trial": trial,
        "measured_run": measured,
        "evaluation_is_bottleneck": trial["eval_share"] >= 0.5,
    }

    print(f"{'domain':<10} {'images':>7} {'seconds':>8} {'images/s':>9}")
    for split, r in rows.items():
        print(f"{split:<10} {r['images']:7d} {r['seconds']:8.3f} {r['images_per_s']:9.0f}")
    print(f"demo trial ({DEMO_EPOCHS} epochs, {args.threads} threads): training {train_s:.1f} s "
          f"({epoch:.2f} s/epoch), val every epoch {val_s:.1f} s, {'+'.join(cfg.data.eval_domains)} once "
          f"{demo_domains:.2f} s -> evaluation {trial['eval_share']:.1%} of the trial; "
          f"with all {len(rows) - 1} domains {trial['all_domains_eval_share']:.1%}")
    print(f"measured {args.epochs}-epoch run: wall {run_wall:.1f} s, training epochs {sum(epoch_s):.1f} s, "
          f"rest (eval, checkpoints, images) {measured['rest_s']:.1f} s ({measured['rest_share']:.1%})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls in seconds (a busy machine's noise only adds time)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def per_image(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cityscapes_files import make_cityscapes
    from test_metrics import _OldSegMetrics  # the pre-issue-27 implementation, kept as the tests' reference

    from hardseg.config import DataConfig
    from hardseg.data import build_source
    from hardseg.data.corruption_cache import (CachedCorruptedSource, cached_source, make_cache,
                                               parse_corruptions, parse_severities)
    from hardseg.data.corruptions import CorruptedSource
    from hardseg.data.transforms import EvalTransform
    from hardseg.trainables.evaluation import metrics_for

    torch.set_num_threads(args.threads)
    out_path = args.out or Path(__file__).parent / "results" / "eval_cost_image.json"
    work = Path(tempfile.mkdtemp(prefix="hardseg-evalcost-image-"))
    root = make_cityscapes(work / "cityscapes", 0, args.images, tuple(args.size), unique=args.images)
    cfg = DataConfig(dataset="cityscapes", root=str(root))
    base = build_source(cfg, "val")
    info = base.info
    png = base.images[0]
    decode_s = _best(lambda: np.asarray(Image.open(png).convert("RGB")), args.repeats)

    # -- metrics: old (host, per-class loop, float max-pool) vs new, per image
    c = info.num_classes
    rng = np.random.default_rng(0)
    _, fixture = EvalTransform()(*base.load(0))
    h, w = args.size
    blocks = torch.from_numpy(np.kron(rng.integers(0, c, (h // 16, w // 16)), np.ones((16, 16), np.int64)))
    noise = torch.from_numpy(rng.integers(0, c, (h, w)))
    metrics = {}
    for name, target in (("fixture labels", fixture), ("16x16 blocks", blocks), ("noise", noise)):
        target = target[None]
        pred = torch.where(torch.rand(target.shape) < 0.2, torch.randint(0, c, target.shape), target)
        pred = torch.where(pred == info.ignore_index, 0, pred)
        row = {}
        for impl, make in (("old", lambda: _OldSegMetrics(c, info.class_names, info.large_classes,
                                                          info.small_classes, info.thin_classes)),
                           ("new", lambda: metrics_for(info))):
            m = make()
            row[f"{impl}_s"] = _best(lambda: m.update(target, pred), args.repeats)
            row[f"{impl}_vs_decode"] = row[f"{impl}_s"] / decode_s
        row["speedup"] = row["old_s"] / row["new_s"]
        metrics[name] = row

    # -- forward pass of the model on one image
    forward = None
    if args.model != "none":
        from hardseg.models import build_model

        net = build_model(args.model, info.num_classes).eval()
        image = EvalTransform()(*base.load(0))[0][None]
        with torch.no_grad():
            forward = {"model": args.model, "seconds": _best(lambda: net(image), max(1, args.repeats // 3))}
        forward["vs_decode"] = forward["seconds"] / decode_s

    # -- corruption: on the fly vs from a cache made once
    names, sevs = parse_corruptions(args.corruptions), parse_severities(args.severities)
    c0 = time.process_time()
    made = make_cache(cfg, ["val"], names, sevs, work / "cityscapes-corrupted", args.workers, progress=False)
    make_cpu = made.cpu_seconds + (time.process_time() - c0)
    corr: dict[str, dict[str, float]] = {}
    for name in names:
        for sev in sevs:
            fly, cached = CorruptedSource(base, name, sev), cached_source(cfg, base, "val", name, sev)
            assert isinstance(cached, CachedCorruptedSource)
            row = {}
            for kind, src in (("on_the_fly", fly), ("cached", cached)):
                t0 = time.process_time()
                for i in range(len(base)):
                    src.load(i)
                row[f"{kind}_cpu_s_per_image"] = (time.process_time() - t0) / len(base)
            corr[f"{name}-{sev}"] = row
    total = {k: sum(r[k] for r in corr.values()) for k in ("on_the_fly_cpu_s_per_image", "cached_cpu_s_per_image")}
    result = {
        "benchmark": "eval_cost_per_image",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "settings": {"threads": args.threads, "size": list(args.size), "images": args.images, "classes": c,
                     "repeats": args.repeats, "corruptions": names, "severities": sevs, "workers": args.workers},
        "png_decode_s": decode_s, "metrics": metrics, "forward": forward,
        "cache": {"make_wall_s": made.seconds, "make_cpu_s": make_cpu, "files": made.files,
                  "bytes": made.bytes, "mib": made.bytes / 2 ** 20},
        "corruption": corr, "corruption_total": total,
    }
    print(f"decode one {h}x{w} PNG: {decode_s * 1e3:.1f} ms  ({args.threads} torch thread(s))")
    print(f"{'metrics, label map':<22} {'old ms':>8} {'new ms':>8} {'old/decode':>10} {'new/decode':>10} {'speedup':>8}")
    for name, r in metrics.items():
        print(f"{name:<22} {r['old_s'] * 1e3:8.1f} {r['new_s'] * 1e3:8.1f} {r['old_vs_decode']:10.2f} "
              f"{r['new_vs_decode']:10.2f} {r['speedup']:8.1f}")
    if forward:
        print(f"forward {forward['model']}: {forward['seconds']:.2f} s ({forward['vs_decode']:.0f}x decode)")
    print(f"{'corruption':<22} {'on the fly CPU s':>16} {'cached CPU s':>13}  (per image)")
    for name, r in corr.items():
        print(f"{name:<22} {r['on_the_fly_cpu_s_per_image']:16.3f} {r['cached_cpu_s_per_image']:13.3f}")
    print(f"{'total':<22} {total['on_the_fly_cpu_s_per_image']:16.2f} {total['cached_cpu_s_per_image']:13.2f}")
    print(f"cache ({len(names)} corruptions x {len(sevs)} severities x {args.images} images): made in "
          f"{made.seconds:.1f} s wall, {make_cpu:.1f} CPU-s, {made.files} files, {made.bytes / 2 ** 20:.1f} MiB")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out_path}")
    shutil.rmtree(work, ignore_errors=True)  # the cache is large (lossless PNGs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

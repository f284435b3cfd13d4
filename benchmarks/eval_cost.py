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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_cost.json")
    args = p.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from hardseg.config import load_config
    from hardseg.data import build_dataset
    from hardseg.data.synthetic import SPLITS
    from hardseg.trainables.evaluate import load_inference_model
    from hardseg.trainables.local import run_local
    from hardseg.trainables.loop import StepSettings, _metrics_for, evaluate

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
            evaluate(model, DataLoader(ds, batch_size=batch), _metrics_for(ds.info), StepSettings(torch.device("cpu")))
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


if __name__ == "__main__":
    sys.exit(main())

"""Step time of the Ray Train loop vs a bare PyTorch loop, and fixed per-run overhead.

Same model (tiny_seg), data (synthetic 64×64), batch and threads in all three:

* ``bare``:  a minimal PyTorch loop (forward, CE, backward, AdamW step), no hardseg loop;
* ``local``: hardseg's per-worker loop (``trainables.loop.fit``) in this process, no Ray;
* ``ray``:   the same loop under Ray Train (1 worker with all threads, and 2 DDP workers),
  launched by ``hardseg train``'s driver (MLflow logging included).

Prints a table and writes JSON (default ``benchmarks/results/train_overhead.json``).
Target: ray/bare step-time ratio ≤ 1.03. Fixed overhead = launch → first training step.

    .venv/bin/python benchmarks/train_overhead.py
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

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def bare_loop(cfg, steps_to_skip: int = 5) -> float:
    import torch
    from torch.utils.data import DataLoader

    from hardseg.data import build_dataset
    from hardseg.models import build_model
    from hardseg.strategies.functional import mean_ce

    torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(0)
    ds = build_dataset(cfg.data, "train", train=True)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    net = build_model(cfg.model.name, ds.info.num_classes, width=cfg.model.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    net.train()
    times = []
    for _ in range(cfg.train.epochs):
        for images, target in loader:
            t0 = time.perf_counter()
            loss = mean_ce(net(images).logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[steps_to_skip:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=480)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_overhead.json")
    args = p.parse_args()

    from hardseg.config import load_config
    from hardseg.platform.train_job import run_training
    from hardseg.trainables.local import run_local

    work = Path(tempfile.mkdtemp(prefix="hardseg-bench-"))
    base = [f"data.root={work / 'data'}", f"data.synthetic.n_train={args.n_train}", "data.synthetic.n_val=64",
            "data.synthetic.n_shift=16", "data.eval_domains=[]", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}", "train.log_images_every=0",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"ray.storage_path={work / 'runs'}"]
    one = load_config(None, base + [f"train.num_threads={args.threads}", "ray.num_workers=1",
                                    f"ray.cpus_per_worker={args.threads}"])
    from hardseg.platform.prepare import prepare_data, resolve_paths
    prepare_data(resolve_paths(one))

    rows = {}
    rows["bare"] = {"step_s": bare_loop(one)}
    hist = run_local(one)
    rows["local"] = {"step_s": statistics.median(h["train/step_time_s"] for h in hist[1:] or hist)}

    for workers in (1, 2):
        cfg = load_config(None, base + [f"ray.num_workers={workers}", f"ray.cpus_per_worker={args.threads // workers}",
                                        f"train.num_threads={args.threads // workers}"])
        launch = time.time()
        out = run_training(cfg)
        client_hist = out.metrics
        from mlflow.tracking import MlflowClient

        client = MlflowClient(out.tracking_uri)
        steps = [m.value for m in client.get_metric_history(out.run_id, "train/step_time_s")]
        first = min(m.value for m in client.get_metric_history(out.run_id, "train/first_step_unix"))
        rows[f"ray_{workers}w"] = {
            "step_s": statistics.median(steps[1:] or steps),
            "launch_to_first_step_s": first - launch,
            "wall_s": out.wall_s,
            "images_per_s_last_epoch": client_hist.get("train/images_per_s"),
        }

    bare = rows["bare"]["step_s"]
    for name, r in rows.items():
        r["ratio_vs_bare"] = r["step_s"] / bare
    # 2 workers process 2 batches per step: compare per-image time too.
    rows["ray_2w"]["per_image_ratio_vs_bare"] = rows["ray_2w"]["step_s"] / 2 / bare
    result = {
        "benchmark": "train_overhead",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "target_ratio": 1.03,
        "ray_1w_meets_target": rows["ray_1w"]["ratio_vs_bare"] <= 1.03,
    }
    print(f"{'loop':<8} {'step ms':>9} {'ratio':>7} {'launch→1st step s':>18}")
    for name, r in rows.items():
        lfs = r.get("launch_to_first_step_s")
        print(f"{name:<8} {r['step_s'] * 1e3:9.1f} {r['ratio_vs_bare']:7.3f} {'' if lfs is None else f'{lfs:18.1f}'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""mIoU per ImageNet-C corruption family of a trained model, and the CPU cost of each corruption.

    # a model's mIoU on every corruption domain of its val split (all severities), per family, mPC, rPC
    python benchmarks/corruption_families.py eval RUN/checkpoint_latest/model_export.pt --out benchmarks/results/x.json

    # seconds to corrupt one 1024x2048 image with each corruption (severity 3), on this machine's CPU
    python benchmarks/corruption_families.py time --out benchmarks/results/y.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def evaluate(checkpoint: str, severities: list[int], device: str) -> dict:
    import torch

    from hardseg.data.corruptions import CORRUPTIONS, FAMILIES
    from hardseg.trainables.evaluation import evaluate_domains, load_inference_model
    from hardseg.robustness import robustness

    torch.set_num_threads(2)
    model, cfg = load_inference_model(checkpoint)
    specs = ["val"] + [f"corrupt:{c}-{s}" for c in CORRUPTIONS for s in severities]
    t0 = time.perf_counter()
    m = evaluate_domains(model, cfg, specs, device=device)
    wall = time.perf_counter() - t0
    clean = m["val/miou"]
    per_corruption = {c: float(np.mean([m[f"corrupt.{c}-{s}/miou"] for s in severities])) for c in CORRUPTIONS}
    per_family = {f: float(np.mean([per_corruption[c] for c in names])) for f, names in FAMILIES.items()}
    rob = robustness(m, "miou", clean=clean)
    return {"checkpoint": checkpoint, "clean_val_miou": clean, "severities": severities,
            "per_family_miou": per_family, "per_corruption_miou": per_corruption,
            "per_domain_miou": {k[:-5]: v for k, v in m.items() if k.endswith("/miou")},
            "mPC": rob["robustness/mPC/miou"], "rPC": rob["robustness/rPC/miou"],
            "relative_per_family": {k.split("/")[1]: v for k, v in rob.items() if "/corruption_" in k},
            "eval_wall_s": wall}


def timing(severity: int, repeats: int) -> dict:
    from hardseg.data.corruptions import CORRUPTIONS, corrupt

    img = np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    wall, cpu = {}, {}
    for name in CORRUPTIONS:
        walls, cpus = [], []
        for r in range(1 if name == "glass_blur" else repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            corrupt(img, name, severity, r)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        wall[name], cpu[name] = min(walls), min(cpus)
        print(f"{name:<20} wall {wall[name]:8.2f} s   cpu {cpu[name]:8.2f} s", flush=True)
    return {"image": "1024x2048 RGB uint8", "severity": severity, "wall_s_min_of_repeats": wall,
            "process_cpu_s_min_of_repeats": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval")
    e.add_argument("checkpoint")
    e.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    e.add_argument("--device", default="cpu")
    e.add_argument("--out")
    t = sub.add_parser("time")
    t.add_argument("--severity", type=int, default=3)
    t.add_argument("--repeats", type=int, default=2)
    t.add_argument("--out")
    args = p.parse_args()
    if args.cmd == "eval":
        res = evaluate(args.checkpoint, args.severities, args.device)
        print(f"clean val mIoU {res['clean_val_miou']:.4f}  mPC {res['mPC']:.4f}  rPC {res['rPC']:.4f}")
        print(f"{'family':<10} {'mIoU':>7} {'rel.':>6}")
        for f, v in res["per_family_miou"].items():
            print(f"{f:<10} {v:7.4f} {v / res['clean_val_miou']:6.3f}")
        for c, v in res["per_corruption_miou"].items():
            print(f"  {c:<20} {v:7.4f}")
    else:
        res = timing(args.severity, args.repeats)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

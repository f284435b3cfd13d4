"""Every strategy under the same budget: mIoU and hard-pixel metrics, one seed.

Each strategy is one ``hardseg train`` run (2 DDP workers on Ray Train, MLflow
logging) on the synthetic benchmark with identical data, model, optimiser,
epochs and seed. Prints a Markdown table and writes JSON + Markdown
(default ``benchmarks/results/strategy_compare.{json,md}``). One seed: the
differences are indicative only (seed-to-seed spread is not measured here).

    .venv/bin/python benchmarks/strategy_compare.py --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

DEFAULT = ["ce", "cb_ce", "ohem", "focal", "hl", "self_regulation", "coarse_to_fine", "hl+coarse_to_fine"]
COLUMNS = ["val/miou", "val/band_iou", "val/small_iou", "val/small_recall", "val/thin_iou", "fog-3/miou"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", nargs="+", default=DEFAULT, help="names; combine with '+', e.g. hl+coarse_to_fine")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "strategy_compare.json")
    args = p.parse_args()

    from hardseg.config import load_config
    from hardseg.platform.train_job import run_training

    work = Path(tempfile.mkdtemp(prefix="hardseg-compare-"))
    rows = {}
    for combo in args.strategies:
        names = combo.split("+")
        cfg = load_config(None, [f"strategies=[{','.join(names)}]", f"train.epochs={args.epochs}",
                                 f"seed={args.seed}", f"data.root={Path(args.data_root).resolve()}",
                                 f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "tracking.experiment=strategy-compare",
                                 f"ray.storage_path={work / 'runs'}", "train.log_images_every=0", *args.overrides])
        out = run_training(cfg)
        rows[combo] = {k: out.metrics.get(k) for k in COLUMNS} | {"wall_s": out.wall_s, "run_id": out.run_id}
        print(f"[compare] {combo}: " + ", ".join(f"{k}={v:.4f}" for k, v in rows[combo].items() if isinstance(v, float)))

    head = "| strategy | " + " | ".join(c.replace("val/", "") for c in COLUMNS) + " | wall s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for combo, r in rows.items():
        lines.append(f"| {combo} | " + " | ".join(f"{r[c]:.3f}" for c in COLUMNS) + f" | {r['wall_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "strategy_compare", "epochs": args.epochs, "seed": args.seed,
                                    "overrides": args.overrides, "rows": rows}, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parameters of every model × strategy: the training model and the export, built on the meta device.

For every registered model (torchvision, tiny_seg, each ``smp:<Architecture>``
with its default encoder unless ``--encoder`` is given) and every built-in
strategy with its paper defaults, the training model (network + the
strategy's training-only modules) is built on PyTorch's meta device, as the
driver's check does (``strategies.build.check_strategies_fit``). The table gives
the parameters of the training model and of ``TrainingModel.export()``; HL and
SR exports must equal CE's (their modules are training-only), C2F's export
holds its stages. Writes ``benchmarks/results/model_zoo.json``.

    python benchmarks/model_zoo.py
    python benchmarks/model_zoo.py --encoder resnet18 --models smp:Unet smp:FPN
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hardseg.models import available_models, build_model
from hardseg.strategies import Objective, StrategyContext, TrainingModel

NUM_CLASSES = 19  # Cityscapes' label space
# A 2-level hierarchy for C2F (Cityscapes' 7 categories are not needed for a parameter count).
HIERARCHY = (tuple(min(c // 3, 6) for c in range(NUM_CLASSES)),)
STRATEGIES = ["ce", "cb_ce", "focal", "ohem", "hl", "self_regulation", "coarse_to_fine"]
RESULTS = Path(__file__).resolve().parent / "results" / "model_zoo.json"


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--encoder", default=None, help="encoder of the smp:* models (default: each one's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    ctx = StrategyContext(num_classes=NUM_CLASSES, class_frequencies=np.arange(1, NUM_CLASSES + 1, dtype=float),
                          hierarchy=HIERARCHY)
    rows = []
    for model in args.models or available_models():
        encoder = args.encoder if model.startswith("smp:") else None
        row = {"model": model, "encoder": encoder, "meta_check": "ok"}
        t0 = time.perf_counter()
        for strategy in STRATEGIES:
            objective = Objective([strategy], {}, ctx)
            try:
                with torch.device("meta"):
                    tm = TrainingModel(build_model(model, NUM_CLASSES, encoder=encoder), objective)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row["meta_check"] = f"{strategy}: {type(exc).__name__}: {exc}"
                break
            assert all(p.device.type == "meta" for p in tm.parameters())
            row[f"{strategy}/train"] = count(tm)
            row[f"{strategy}/export"] = count(tm.export())
            if model.startswith("smp:") and row["encoder"] is None:
                row["encoder"] = tm.net.encoder_name
        row["hl_sr_export_equal_ce"] = row.get("hl/export") == row.get("self_regulation/export") == row.get("ce/export")
        row["build_s"] = time.perf_counter() - t0
        rows.append(row)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"num_classes": NUM_CLASSES, "strategies": STRATEGIES, "torch": torch.__version__, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return result


def print_table(rows: list[dict]) -> None:
    m = lambda n: f"{n / 1e6:.2f}" if isinstance(n, int) else "-"  # noqa: E731
    head = f"| model | encoder | export (CE = HL = SR) M | " + " | ".join(f"{s} train M" for s in STRATEGIES) \
        + " | C2F export M | HL/SR export = CE | meta check |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r['model']} | {r['encoder'] or '-'} | {m(r.get('ce/export'))} | "
              + " | ".join(m(r.get(f"{s}/train")) for s in STRATEGIES)
              + f" | {m(r.get('coarse_to_fine/export'))} | {'yes' if r['hl_sr_export_equal_ce'] else 'NO'} | "
              f"{r['meta_check']} |")


if __name__ == "__main__":
    main()

"""Bytes a training checkpoint takes on disk, before and after issue 22's layout, for a model + strategies.

Builds the training model on the CPU (random init, no pretrained download), takes one SGD step so
that the optimiser holds its momentum buffers, and serialises (``torch.save`` into memory) what each
layout writes:

* before: every checkpoint folder held ``checkpoint.pt`` (model, optimiser, scheduler and the best
  model's weights inside the best-epoch state) plus ``model_export.pt`` (the best weights again) and
  the visuals; two folders kept;
* after: ``checkpoint.pt`` without the best weights (the training state, RNG states, sampler
  position, the best file's name); the best model once, in ``best/best-<step>.pt`` beside the
  ``train.keep_checkpoints`` folders (two best files at most while the two kept checkpoints name
  different bests); ``model_export.pt`` only in the final checkpoint; no visuals.

Writes ``benchmarks/results/checkpoint_bytes.json``.

    python benchmarks/checkpoint_bytes.py                                # DeepLabV3-R50 + HL, 19 classes
    python benchmarks/checkpoint_bytes.py --model smp:PSPNet --encoder resnet50
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch

from hardseg.config import load_config
from hardseg.data.cityscapes import CITYSCAPES_INFO
from hardseg.strategies.build import build_training_model
from hardseg.trainables.best import BestModel, BestStore
from hardseg.trainables.checkpoints import TrainingState, rng_states
from hardseg.trainables.optim import ScheduledLR, build_optimizer
from hardseg.trainables.schedule import Schedule

RESULTS = Path(__file__).resolve().parent / "results"


def nbytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def measure(model: str, encoder: str | None, strategies: str, keep: int) -> dict:
    sets = [f"model.name={model}", f"strategies=[{strategies}]", "train.optimizer=sgd", "train.iters=40000",
            "train.lr=0.01", "model.aux=true"] + ([f"model.encoder={encoder}"] if encoder else [])
    cfg = load_config(None, sets)
    torch.manual_seed(0)
    tm, _ = build_training_model(cfg, CITYSCAPES_INFO, np.ones(CITYSCAPES_INFO.num_classes))
    opt = build_optimizer(cfg, tm)
    for p in tm.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # momentum buffers, as after any real step
    schedule = Schedule.from_config(cfg.train, 371)
    sched = ScheduledLR(opt, schedule)
    export = tm.export()
    best = BestModel(schedule.unit)
    best.update(4000, {"miou": 0.5}, export)
    config = cfg.model_dump(mode="json")
    export_file = {"model": best.weights, "epoch": 4000, "config": config,
                   "num_parameters": sum(p.numel() for p in export.parameters())}
    # before: the old TrainingState.state_dict (best weights inside) + model_export.pt in every folder
    old_ckpt = {"model": tm.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": None, "epoch": 0, "best": best.state_dict(), "config": config}
    before_one = nbytes(old_ckpt) + nbytes(export_file)
    # after
    state = TrainingState(tm, opt, sched, None, best, BestStore())
    new_ckpt = state.state_dict(8000, cfg, [rng_states()], schedule)
    best_file = nbytes({"model": best.weights, "iteration": 4000, "val": best.val})
    after_one = nbytes(new_ckpt)
    return {"model": model, "encoder": encoder, "strategies": strategies,
            "parameters": sum(p.numel() for p in tm.parameters()),
            "inference_parameters": export_file["num_parameters"], "keep": keep,
            "before_checkpoint_bytes": before_one, "before_total_bytes": keep * before_one,
            "after_checkpoint_bytes": after_one, "best_file_bytes": best_file,
            "after_total_bytes": keep * after_one + best_file,
            "after_total_worst_bytes": keep * after_one + min(keep, 2) * best_file}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplabv3_resnet50")
    p.add_argument("--encoder")
    p.add_argument("--strategies", default="hl")
    p.add_argument("--keep", type=int, default=2, help="train.keep_checkpoints")
    args = p.parse_args()
    r = measure(args.model, args.encoder, args.strategies, args.keep)
    mb = 1e6
    print(f"{r['model']} + {r['strategies']}: {r['parameters']:,} training parameters "
          f"({r['inference_parameters']:,} exported)")
    print(f"{'layout':<8} {'per checkpoint MB':>18} {'best once MB':>13} {'on disk, ' + str(r['keep']) + ' kept MB':>20}")
    print(f"{'before':<8} {r['before_checkpoint_bytes'] / mb:>18.1f} {'-':>13} {r['before_total_bytes'] / mb:>20.1f}")
    print(f"{'after':<8} {r['after_checkpoint_bytes'] / mb:>18.1f} {r['best_file_bytes'] / mb:>13.1f} "
          f"{r['after_total_bytes'] / mb:>20.1f}  (worst {r['after_total_worst_bytes'] / mb:.1f})")
    RESULTS.mkdir(exist_ok=True)
    name = "checkpoint_bytes.json" if args.model == "deeplabv3_resnet50" else \
        f"checkpoint_bytes_{args.model.replace(':', '_')}.json"
    (RESULTS / name).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()

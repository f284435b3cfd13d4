"""Warm start from a previous run's encoder, and the MLflow model reproducing a run's best/val/miou.

1. Run A trains ``--model``/``--encoder`` for ``--epochs-a`` epochs on a synthetic
   set drawn with another seed (other images, same task).
2. Run B starts from A's encoder (``model.pretrained: <A>/model_export.pt``: the
   encoder part of A's export is taken) and run C from scratch; both train one
   epoch on the benchmark's seed-0 set with the same seed, and their first-epoch
   ``val/miou`` is compared.
3. A's best model is logged in MLflow's format (``runs.log_checkpoint_artifacts``
   into a SQLite store), loaded back with ``mlflow.pytorch.load_model`` and
   evaluated on A's validation split: the difference to A's ``best/val/miou``.

All in one process without Ray (``trainables.local.run_local``). Writes
``benchmarks/results/warm_start.json``.

    python benchmarks/warm_start.py
    python benchmarks/warm_start.py --model tiny_seg --encoder '' --size 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from hardseg.config import load_config
from hardseg.trainables.local import run_local

RESULTS = Path(__file__).resolve().parent / "results" / "warm_start.json"


def config(args, root: Path, data_seed: int, epochs: int, **extra):
    sets = {"data.root": str(root), "data.synthetic.size": args.size, "data.synthetic.n_train": args.n_train,
            "data.synthetic.n_val": args.n_val, "data.synthetic.n_shift": 16, "data.synthetic.seed": data_seed,
            "data.eval_domains": "[]", "train.epochs": epochs, "train.batch_size": args.batch,
            "train.log_images_every": 0, "train.num_threads": args.threads, "model.name": args.model, **extra}
    if args.encoder:
        sets["model.encoder"] = args.encoder
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smp:DeepLabV3Plus")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs-a", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/hardseg-warm-start"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    cfg_a = config(args, args.work / "data-seed1", 1, args.epochs_a)
    hist_a = run_local(cfg_a, args.work / "run-a")
    export_a = args.work / "run-a" / "checkpoint_latest" / "model_export.pt"
    cfg_b = config(args, args.work / "data-seed0", 0, 1, **{"model.pretrained": str(export_a)})
    hist_b = run_local(cfg_b, args.work / "run-b")
    cfg_c = config(args, args.work / "data-seed0", 0, 1)
    hist_c = run_local(cfg_c, args.work / "run-c")

    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from hardseg.platform.runs import log_checkpoint_artifacts
    from hardseg.trainables.evaluation import evaluate_domains

    uri = f"sqlite:///{args.work / 'mlruns' / 'mlflow.db'}"
    (args.work / "mlruns").mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    name = f"warm-start-{time.strftime('%Y%m%d-%H%M%S')}"
    exp = client.create_experiment(name, artifact_location=(args.work / "mlruns" / "artifacts" / name).as_uri())
    run_id = client.create_run(exp).info.run_id
    log_checkpoint_artifacts(client, run_id, export_a.parent, yaml.safe_dump(cfg_a.model_dump(mode="json")), 0.0)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    reloaded = evaluate_domains(model, cfg_a, ["val"])["val/miou"]

    result = {
        "model": args.model, "encoder": args.encoder, "size": args.size, "n_train": args.n_train,
        "n_val": args.n_val, "batch": args.batch, "epochs_a": args.epochs_a,
        "a_best_val_miou": hist_a[-1]["best/val/miou"], "a_best_epoch": hist_a[-1]["best/epoch"],
        "first_epoch_val_miou_from_a_encoder": hist_b[0]["val/miou"],
        "first_epoch_val_miou_scratch": hist_c[0]["val/miou"],
        "mlflow_load_model_val_miou": reloaded,
        "mlflow_abs_diff": abs(reloaded - hist_a[-1]["best/val/miou"]),
        "wall_s": time.perf_counter() - t0, "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

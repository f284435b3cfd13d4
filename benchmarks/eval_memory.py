"""Peak memory (RSS) and time of evaluating one 1024×2048 image on CPU: whole vs sliding windows.

Each mode runs in a fresh process (``--child``), so its peak RSS (``VmHWM``) is its own; the table also
shows the RSS before the evaluation (model built, image loaded) and the difference. Evaluation goes
through hardseg's :func:`~hardseg.trainables.evaluation.evaluate` with ``eval.mode`` whole or slide
(512×1024 windows, 341×682 stride: 3×3 windows), on generated Cityscapes-format files.

    python benchmarks/eval_memory.py [--model deeplabv3_resnet50] [--threads 2]

Writes JSON (default ``benchmarks/results/eval_memory_<model>.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check import REPO, run_config  # also sets up sys.path for hardseg
from cityscapes_files import make_cityscapes


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str, root: Path, mode: str, threads: int) -> dict:
    import torch

    from hardseg.data import build_dataset
    from hardseg.strategies.build import build_training_model
    from hardseg.trainables.evaluation import evaluate, metrics_for
    from hardseg.trainables.loaders import build_eval_loader
    from hardseg.trainables.settings import StepSettings, slide_settings

    torch.set_num_threads(threads)
    s = dict(crop=(512, 1024), batch=1, workers=0, threads=threads)
    cfg = run_config(model, root, s, ["ce"], 1)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"mode": mode}),
                                 "train": cfg.train.model_copy(update={"amp": "off", "channels_last": "off"})})
    ds = build_dataset(cfg.data, "val", train=False)
    loader = build_eval_loader(cfg, ds, 0, 1, torch.device("cpu"))
    torch.manual_seed(0)
    tm, _ = build_training_model(cfg, ds.info, None)
    net = tm.export().eval()
    ds[0]  # decode once, so the page cache and the reader are warm
    before = rss_mib("VmRSS")
    t0 = time.perf_counter()
    evaluate(net, loader, metrics_for(ds.info), StepSettings(torch.device("cpu"), slide=slide_settings(cfg)))
    return {"time_s": time.perf_counter() - t0, "rss_before_mib": before, "peak_rss_mib": rss_mib("VmHWM")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplabv3_resnet50")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", choices=["whole", "slide"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.model, a.data, a.child, a.threads)))
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="hardseg-evalmem-")
    root = a.data or Path(tmp.name) / "cityscapes"
    make_cityscapes(root, 1, 1, (1024, 2048), unique=1)
    res: dict = {"model": a.model, "image": [1024, 2048], "window": [512, 1024], "stride": [341, 682],
                 "threads": a.threads}
    for mode in ("slide", "whole"):
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--model", a.model, "--data", str(root),
                               "--threads", str(a.threads)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        res[mode] = json.loads(line[0][len("RESULT "):])
        r = res[mode]
        print(f"{a.model} {mode:5}: {r['time_s']:7.1f} s, peak RSS {r['peak_rss_mib']:7.0f} MiB "
              f"(before {r['rss_before_mib']:.0f}, +{r['peak_rss_mib'] - r['rss_before_mib']:.0f})", flush=True)
    out = a.out or REPO / "benchmarks" / "results" / f"eval_memory_{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fixed per-trial overhead of a sweep, before/after, and the quickstart sweep's wall time.

An ablation grid of N trials runs one trial at a time (``--max-concurrent 1``),
each a 1-epoch run on a small synthetic set. Per-trial cycle = median time
between the starts of consecutive trials' MLflow runs (Tune bookkeeping,
trial start, TorchTrainer launch, training, teardown); fixed per-trial
overhead = cycle − the same run's time in a plain process
(``trainables.loop.fit`` with a LocalSession: data loading, model build,
1 epoch, evaluation). Sweep-level costs (CLI start, ``ray.init``, the
parent run) are paid once and are not in it. Modes:

* ``trainer-before``: every trial fits a TorchTrainer with 2 DDP workers, Ray
  Train's default controller settings (2 s poll, preemption watcher) — the
  state before this benchmark's issue;
* ``trainer``: the same with hardseg's controller settings (``trainer.CONTROLLER_ENV``);
* ``in-process``: one-worker trials train in the trial's own process (no TorchTrainer).

``--quickstart`` also times ``hardseg sweep quickstart`` (6 trials, OptunaSearch +
ASHA, 2 DDP workers per trial) on the default synthetic set.
Target (the sweeps issue): per-trial overhead ≤ 8 s on a 2-core machine.
Writes ``benchmarks/results/sweep_overhead.json``.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 4] [--quickstart]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sweep_overhead.json"
SMALL = ["data.synthetic.size=32", "data.synthetic.n_train=64", "data.synthetic.n_val=32", "data.synthetic.n_shift=16",
         "train.batch_size=8", "train.epochs=1", "data.eval_domains=[fog-3]"]
MODES = {
    "trainer-before": (["--always-trainer"], ["ray.num_workers=2"],
                       {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}),
    "trainer": (["--always-trainer"], ["ray.num_workers=2"], {}),
    "in-process": ([], ["ray.num_workers=1"], {}),
}


def hardseg(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    exe = Path(sys.executable).parent / "hardseg"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"hardseg {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall


def bare_run_s(cwd: Path, data: Path, workers: int) -> float:
    """One trial's work in a plain process (1 epoch), timed inside that process."""
    code = ("import time,sys;from hardseg.config import load_config;from hardseg.trainables.local import run_local;"
            f"cfg=load_config(None,{[*SMALL, f'data.root={data}', 'ray.num_workers=1']!r});"
            f"cfg.train.num_threads={workers};t=time.perf_counter();run_local(cfg);print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def trial_cycles(cwd: Path, name: str) -> list[float]:
    """Seconds between the starts of consecutive trial runs of sweep ``name``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hardseg")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`hardseg.sweep` = '{name}'",
                              max_results=1000)
    starts = sorted(r.info.start_time / 1000 for r in runs if "mlflow.parentRunId" in r.data.tags)
    return [b - a for a, b in zip(starts, starts[1:])]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4, help="trials per mode (the grid: seeds 0..N-1 of 'ce')")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                   help="modes to measure; rows of other modes already in --out are kept")
    p.add_argument("--quickstart", action="store_true", help="also time 'hardseg sweep quickstart'")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hardseg-sweep-bench-"))
    data = work / "data"
    hardseg(["data", "generate", "--root", str(data), *sum((["--set", s] for s in SMALL), [])], work, {})
    rows = []
    for mode in args.modes:
        flags, extra, env = MODES[mode]
        bare = bare_run_s(work, data, 2)
        seeds = [str(s) for s in range(args.trials)]
        sets = sum((["--set", s] for s in [*SMALL, *extra, f"data.root={data}"]), [])
        wall = hardseg(["ablate", "--strategies", "ce", "--seeds", *seeds, "--name", f"bench-{mode}",
                        "--max-concurrent", "1", *flags, *sets], work, env)
        cycles = trial_cycles(work, f"bench-{mode}")
        cycle = statistics.median(cycles)
        rows.append({"mode": mode, "trials": args.trials, "sweep_wall_s": round(wall, 2),
                     "trial_cycles_s": [round(c, 2) for c in cycles], "cycle_s": round(cycle, 2),
                     "bare_run_s": round(bare, 2), "overhead_per_trial_s": round(cycle - bare, 2)})
        print(f"{mode:<15} sweep wall {wall:6.1f}s  trial cycle {cycle:5.1f}s  bare run {bare:4.1f}s  "
              f"fixed overhead per trial {cycle - bare:5.1f}s", flush=True)
    quick = None
    if args.quickstart:
        qwork = work / "quickstart"
        qwork.mkdir()
        wall = hardseg(["sweep", "quickstart", "--name", "bench-quickstart"], qwork, {})
        quick = {"space": "quickstart", "wall_s_incl_data_generation": round(wall, 1), "trials": 6,
                 "workers_per_trial": 2}
        print(f"quickstart sweep (6 trials, 2 DDP workers each, incl. data generation): {wall:.0f}s", flush=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    measured = {r["mode"] for r in rows}
    rows = [r for r in old.get("rows", []) if r["mode"] not in measured] + rows
    result = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "target_overhead_s": 8.0, "rows": rows, "quickstart": quick or old.get("quickstart"),
              "command": "benchmarks/sweep_overhead.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

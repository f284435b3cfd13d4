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
* ``trainer``: the same with hardseg's controller settings (``cluster.CONTROLLER_ENV``);
* ``in-process``: one-worker trials train in the trial's own process (no TorchTrainer).

Beside the figure, the floor (issue 26): a bare ``TorchTrainer`` with the same 2 gloo workers
and an empty loop (one barrier), fitted ``--bare-fits`` times in one process with Ray up, in the
same run; each DDP mode's overhead is printed as a ratio to its median fit (goal ≤ 1.3).

``--timeline`` runs one ``hardseg train`` (2 workers, one 0.5 s epoch) and one DDP trial (a
1-trial ablation, ``--always-trainer``) with ``HARDSEG_TIMELINE`` set, and prints where their time
goes: the stages hardseg's processes record (:mod:`hardseg.timeline`; command, driver, trial,
Train controller, workers), what MLflow recorded (run start and end, the first and last training
step from ``train/first_step_unix`` and ``train/epoch_time_s``, when the controller logged the
epoch's metrics) and when the command printed its lines. A hardseg without the marks (an older
checkout, via ``PYTHONPATH``) still gets the MLflow and output rows.

``--cli`` times ``import hardseg.config`` and a bad ``--set`` (median of 5 fresh interpreters each).

``--quickstart`` also times ``hardseg sweep quickstart`` (6 trials, OptunaSearch +
ASHA, 2 DDP workers per trial) on the default synthetic set.
Target (the sweeps issue): per-trial overhead ≤ 8 s on a 2-core machine.
Writes ``benchmarks/results/sweep_overhead.json``.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 4] [--modes trainer] [--timeline] [--cli] [--quickstart]
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


BARE_FIT = """
import json, os, sys, tempfile, time
import ray
import ray.train
import torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def loop(config):
    dist.barrier()

workers, fits = int(sys.argv[1]), int(sys.argv[2])
ray.init(num_cpus=max(os.cpu_count() or 1, workers), logging_level="WARNING", log_to_driver=False)
storage = tempfile.mkdtemp(prefix="hardseg-bare-fit-")
times = []
for i in range(fits):
    trainer = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=f"bare-{i}", storage_path=storage))
    t = time.perf_counter()
    trainer.fit()
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def bare_trainer_fits(cwd: Path, workers: int, fits: int) -> list[float]:
    """Seconds per ``TorchTrainer.fit`` of an empty loop (one barrier), Ray's defaults, Ray up, one process."""
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1"}
    out = subprocess.run([sys.executable, "-c", BARE_FIT, str(workers), str(fits)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bare TorchTrainer fit failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def hardseg_streamed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, list[tuple[float, str]]]:
    """Run hardseg, timestamping each line it prints: (start unix, wall s, [(unix, line)])."""
    exe = Path(sys.executable).parent / "hardseg"
    t0 = time.time()
    proc = subprocess.Popen([str(exe), *args], cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = [(time.time(), line.rstrip()) for line in proc.stdout]
    rc = proc.wait()
    wall = time.time() - t0
    if rc != 0:
        sys.exit(f"hardseg {' '.join(args)} failed ({rc}):\n" + "\n".join(l for _, l in lines[-40:]))
    return t0, wall, lines


def mlflow_rows(cwd: Path, run_filter: str, child: bool) -> list[tuple[float, str]]:
    """The stages MLflow recorded for the run matching ``run_filter`` (``child``: a sweep's trial run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hardseg")
    found = [r for r in client.search_runs([exp.experiment_id], filter_string=run_filter, max_results=100)
             if ("mlflow.parentRunId" in r.data.tags) == child]
    if not found:
        return []
    run = found[0]
    rows = [(run.info.start_time / 1000, "mlflow: run started")]
    first = run.data.metrics.get("train/first_step_unix")
    if first is not None:
        rows.append((first, "mlflow: first training step (train/first_step_unix)"))
        rows.append((first + run.data.metrics.get("train/epoch_time_s", 0.0),
                     "mlflow: last training step done (+ train/epoch_time_s)"))
    hist = client.get_metric_history(run.info.run_id, "val/miou")
    if hist:
        rows.append((hist[0].timestamp / 1000, "mlflow: epoch metrics logged (val/miou timestamp)"))
    wall = client.get_metric_history(run.info.run_id, "wall_time_s")
    if wall:
        rows.append((wall[0].timestamp / 1000, "mlflow: wall_time_s logged (after the model export)"))
    if run.info.end_time:
        rows.append((run.info.end_time / 1000, "mlflow: run ended"))
    return rows


def timeline_rows(path: Path) -> list[tuple[float, str]]:
    """hardseg's own marks (:mod:`hardseg.timeline`): the earliest of each event (rank 0 before rank 1)."""
    if not path.is_file():
        return []
    seen: dict[str, float] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        name = rec["event"]
        if rec.get("driver_modules"):
            name += f" [driver modules loaded: {', '.join(rec['driver_modules'])}]"
        seen[name] = min(seen.get(name, rec["t"]), rec["t"])
    return [(t, name) for name, t in seen.items()]


def print_timeline(title: str, t0: float, rows: list[tuple[float, str]]) -> list[dict]:
    rows = sorted(rows)
    print(f"\n{title}\n| t (s) | +Δ (s) | stage |\n|---:|---:|---|")
    out, prev = [], t0
    for t, name in rows:
        print(f"| {t - t0:6.1f} | {t - prev:5.1f} | {name} |")
        out.append({"t_s": round(t - t0, 2), "stage": name})
        prev = t
    return out


def run_timelines(work: Path, data: Path) -> dict:
    """One ``hardseg train`` and one DDP trial with HARDSEG_TIMELINE set; their stage tables."""
    sets = sum((["--set", s] for s in [*SMALL, "ray.num_workers=2", f"data.root={data}"]), [])
    result = {}
    for kind, args in (("train", ["train", *sets]),
                       ("ddp_trial", ["ablate", "--strategies", "ce", "--seeds", "0", "--name", "bench-timeline",
                                      "--max-concurrent", "1", "--always-trainer", *sets])):
        marks = work / f"timeline-{kind}.jsonl"
        marks.unlink(missing_ok=True)
        t0, wall, lines = hardseg_streamed(args, work, {"HARDSEG_TIMELINE": str(marks)})
        rows = [(t0, "benchmark: command launched")]
        rows += [(t, "stdout: " + text[:70]) for t, text in lines
                 if "[hardseg] MLflow run" in text or "[hardseg] epoch" in text]
        rows.append((t0 + wall, "benchmark: command exited"))
        run_filter = ("tags.`hardseg.sweep` = 'bench-timeline'" if kind == "ddp_trial"
                      else "tags.`mlflow.runName` = 'train'")
        rows += mlflow_rows(work, run_filter, child=kind == "ddp_trial") + timeline_rows(marks)
        epoch_line = next((t - t0 for t, text in lines if "[hardseg] epoch" in text), None)
        result[kind] = {"wall_s": round(wall, 2), "first_epoch_line_s": round(epoch_line, 2) if epoch_line else None,
                        "rows": print_timeline(f"timeline: {kind} (wall {wall:.1f} s)", t0, rows)}
    return result


def cli_times(work: Path, repeat: int = 5) -> dict:
    """Median wall of ``import hardseg.config`` and of ``hardseg train --set train.epochs=abc`` (exit 2)."""
    exe = Path(sys.executable).parent / "hardseg"

    def median_wall(cmd: list[str], rc: int) -> float:
        walls = []
        for _ in range(repeat):
            t = time.perf_counter()
            done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if done.returncode != rc:
                sys.exit(f"{' '.join(cmd)}: exit {done.returncode}, expected {rc}:\n{done.stderr[-2000:]}")
        return statistics.median(walls)

    env_free = [sys.executable, "-c", "import hardseg.config"]
    out = {"import_hardseg_config_s": round(median_wall(env_free, 0), 3),
           "bad_set_exit_s": round(median_wall([str(exe), "train", "--set", "train.epochs=abc"], 2), 3)}
    print(f"import hardseg.config {out['import_hardseg_config_s']:.2f}s (process wall, median of {repeat}); "
          f"'hardseg train --set train.epochs=abc' exits in {out['bad_set_exit_s']:.2f}s", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4, help="trials per mode (the grid: seeds 0..N-1 of 'ce')")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                   help="modes to measure; rows of other modes already in --out are kept")
    p.add_argument("--bare-fits", type=int, default=3, help="fits of the bare TorchTrainer floor (0: skip)")
    p.add_argument("--timeline", action="store_true", help="stage tables of one 'hardseg train' and one DDP trial")
    p.add_argument("--cli", action="store_true", help="time 'import hardseg.config' and a bad --set")
    p.add_argument("--quickstart", action="store_true", help="also time 'hardseg sweep quickstart'")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hardseg-sweep-bench-"))
    data = work / "data"
    hardseg(["data", "generate", "--root", str(data), *sum((["--set", s] for s in SMALL), [])], work, {})
    floor = None
    if args.bare_fits and (args.timeline or any(m != "in-process" for m in args.modes)):
        fits = bare_trainer_fits(work, 2, args.bare_fits)
        floor = {"workers": 2, "fits_s": [round(f, 2) for f in fits], "median_s": round(statistics.median(fits), 2)}
        print(f"bare TorchTrainer (2 gloo workers, empty loop, Ray up): fits {', '.join(f'{f:.1f}' for f in fits)}s, "
              f"median {floor['median_s']:.1f}s", flush=True)
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
        row = {"mode": mode, "trials": args.trials, "sweep_wall_s": round(wall, 2),
               "trial_cycles_s": [round(c, 2) for c in cycles], "cycle_s": round(cycle, 2),
               "bare_run_s": round(bare, 2), "overhead_per_trial_s": round(cycle - bare, 2)}
        ratio = ""
        if floor and mode != "in-process":
            row["overhead_over_bare_fit"] = round((cycle - bare) / floor["median_s"], 2)
            ratio = f"  = {row['overhead_over_bare_fit']:.2f}× the bare TorchTrainer fit"
        rows.append(row)
        print(f"{mode:<15} sweep wall {wall:6.1f}s  trial cycle {cycle:5.1f}s  bare run {bare:4.1f}s  "
              f"fixed overhead per trial {cycle - bare:5.1f}s{ratio}", flush=True)
    timelines = run_timelines(work, data) if args.timeline else None
    cli = cli_times(work) if args.cli else None
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
              "bare_trainer_fit": floor or old.get("bare_trainer_fit"),
              "timeline": timelines or old.get("timeline"), "cli": cli or old.get("cli"),
              "hardseg_source": os.environ.get("PYTHONPATH", "installed"),
              "command": "benchmarks/sweep_overhead.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

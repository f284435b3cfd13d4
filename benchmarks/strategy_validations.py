"""How many times strategy settings are validated, per process, in ``hardseg sweep hl`` (issue 24).

Runs ``hardseg sweep hl --num-samples 1`` (one DDP trial of 2 workers, one epoch on a small synthetic
set) with an instrumenting ``sitecustomize`` on ``PYTHONPATH``: once ``hardseg.strategies.base`` is
imported, ``StrategyConfig.model_validate`` (settings validated from given values) and
``StrategyConfig.__init__`` (every settings object built: those validations, plus a strategy's
defaults built with ``Config()``) append one line each to a log, with the process and the hardseg
frames that called. Ray's worker processes inherit ``PYTHONPATH``, so the trial's process and the
Train workers are counted too; each process is named by the frames it ran (``run_trial``: the trial,
``train_loop_per_worker``: a worker, the command's own pid: the driver).

``--src`` points at another checkout's ``src`` (an older commit, for a before/after).

    .venv/bin/python benchmarks/strategy_validations.py [--src DIR] [--out results/strategy_validations.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.synthetic.size=32", "data.synthetic.n_train=64", "data.synthetic.n_val=32", "data.synthetic.n_shift=16",
         "train.epochs=1", "train.batch_size=8", "data.eval_domains=[fog-3]", "tracking.log_model=false"]

SITECUSTOMIZE = '''
import importlib.abc, importlib.machinery, os, sys, traceback

LOG = os.environ["HARDSEG_COUNT_LOG"]


def _frames():
    stack = traceback.extract_stack()[:-3]
    return [f"{os.path.basename(f.filename)}:{f.name}" for f in stack if "/hardseg/" in f.filename]


def _write(event, cls):
    with open(LOG, "a") as out:
        out.write("\\t".join([str(os.getpid()), event, cls.__name__, " < ".join(reversed(_frames()))]) + "\\n")


def _patch(module):
    base = module.StrategyConfig
    validate, init = base.model_validate.__func__, base.__init__

    def model_validate(cls, obj, *args, **kwargs):
        _write("validate", cls)
        return validate(cls, obj, *args, **kwargs)

    def __init__(self, **data):
        _write("build", type(self))
        init(self, **data)

    base.model_validate = classmethod(model_validate)
    base.__init__ = __init__


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "hardseg.strategies.base":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
'''


def role(pid: int, driver: int, frames: set[str]) -> str:
    if pid == driver:
        return "driver"
    if any(f.endswith(":run_trial") for f in frames):
        return "trial"
    if any(f.endswith(":train_loop_per_worker") or f.endswith(":fit_worker") for f in frames):
        return "worker"
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the src folder of the hardseg to count")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "strategy_validations.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hardseg-count-") as tmp:
        work = Path(tmp)
        (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
        log = work / "count.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(args.src.resolve())]),
               "HARDSEG_COUNT_LOG": str(log)}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-c", "import sys; from hardseg.platform.cli import main; sys.exit(main())",
               "sweep", "hl", "--num-samples", "1", "--name", "count", "--tracking-uri", f"sqlite:///{work / 'm.db'}",
               "--set", f"data.root={work / 'data'}", "--set", f"ray.storage_path={work / 'runs'}",
               *[a for s in SMALL for a in ("--set", s)]]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            sys.exit(f"the sweep failed (exit {proc.returncode}):\n{output[-3000:]}")
        lines = [ln.rstrip("\n").split("\t") for ln in log.read_text().splitlines()]
    frames = collections.defaultdict(set)
    for pid, _, _, where in lines:
        frames[int(pid)].update(where.split(" < "))
    counts: dict[str, dict[str, collections.Counter]] = collections.defaultdict(lambda: collections.defaultdict(
        collections.Counter))
    processes = collections.defaultdict(set)
    for pid, event, cls, where in lines:
        r = role(int(pid), proc.pid, frames[int(pid)])
        processes[r].add(int(pid))
        counts[r][event][cls] += 1
    table = {r: {"processes": len(processes[r]), **{e: dict(c) for e, c in counts[r].items()}} for r in counts}
    print(f"hardseg sweep hl --num-samples 1 (src {args.src}):")
    print("| process | count | settings validated from given values | settings objects built (validations + defaults) |")
    print("|---|---:|---|---|")
    def fmt(counter: collections.Counter) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "0"

    for r in ("driver", "trial", "worker", "other"):
        if r in table:
            per = f" (each {sum(counts[r]['validate'].values()) // len(processes[r])})" if len(processes[r]) > 1 else ""
            print(f"| {r} | {len(processes[r])} | {fmt(counts[r]['validate'])}{per} | {fmt(counts[r]['build'])} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"src": str(args.src), "counts": table}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

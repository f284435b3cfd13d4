#!/usr/bin/env python3
"""CPU seconds by kind of process while a command runs: where a test's or a run's CPU goes.

    benchmarks/process_cpu.py [--out FILE.json] [--every 0.25] -- COMMAND [ARGS...]

Every ``--every`` seconds it reads every process's CPU time (user + system) from ``/proc``; a process
that started during the command counts from 0, one that was there before counts from its first reading.
Processes are grouped by kind: Ray's process title (``ray::TrainController``, ``ray::RayTrainWorker``,
``ray::ImplicitFunc`` ...), Ray's daemons, ``pytest``, ``hardseg``, ``mlflow server``. A process that
lives less than one interval is missed, so the sum is a lower bound; the box's total over the command
(``/proc/stat``) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import psutil

DAEMONS = ("raylet", "gcs_server", "dashboard.py", "log_monitor", "autoscaler/_private/monitor.py",
           "ray.util.client.server", "uvicorn", "mlflow server", "-m mlflow", "pytest", "hardseg")


def kind(cmdline: list[str]) -> str:
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    text = " ".join(cmdline)
    return next((d for d in DAEMONS if d in text), os.path.basename(cmdline[0])[:40])


def box_busy_s() -> float:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the table as JSON here")
    p.add_argument("--every", type=float, default=0.25, help="seconds between readings")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give a command after --")
    start, box0 = time.time(), box_busy_s()
    base: dict[tuple[int, float], float] = {}
    seen: dict[tuple[int, float], tuple[str, float]] = {}
    me = os.getpid()
    proc = subprocess.Popen(command)
    while True:
        for q in psutil.process_iter(["pid", "cmdline", "cpu_times", "create_time"]):
            info = q.info
            if info["pid"] == me or info["cpu_times"] is None:
                continue
            key = (info["pid"], info["create_time"])
            cpu = info["cpu_times"].user + info["cpu_times"].system
            base.setdefault(key, 0.0 if info["create_time"] >= start else cpu)
            name = kind(info["cmdline"] or [])
            if name == "?" and key in seen:
                name = seen[key][0]  # a process on its way out has no command line left
            seen[key] = (name, cpu - base[key])
        if proc.poll() is not None:
            break
        time.sleep(args.every)
    wall, box = time.time() - start, box_busy_s() - box0
    table: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, cpu in seen.values():
        if cpu > 0.05:
            table[name][0] += cpu
            table[name][1] += 1
    rows = sorted(table.items(), key=lambda kv: -kv[1][0])
    print(f"{'process kind':<44} {'CPU-s':>8} {'processes':>9}")
    for name, (cpu, n) in rows:
        print(f"{name:<44} {cpu:8.1f} {n:9d}")
    print(f"{'sum of the above':<44} {sum(c for c, _ in table.values()):8.1f}")
    print(f"{'the box (/proc/stat)':<44} {box:8.1f}   over {wall:.1f} s, exit {proc.returncode}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command, "wall_s": round(wall, 1), "box_cpu_s": round(box, 1),
                       "exit": proc.returncode,
                       "kinds": {k: {"cpu_s": round(c, 2), "processes": n} for k, (c, n) in rows}}, f, indent=1)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

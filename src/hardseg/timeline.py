"""Timestamps of a run's stages, for ``benchmarks/sweep_overhead.py --timeline``.

With ``HARDSEG_TIMELINE=<file>`` in the environment of a command, every process of the run (the
command, Ray's Tune trial and Train controller actors, each training worker: Ray starts them from the
environment of the ``ray.init`` caller) appends one JSON line per stage it passes to that file:
``{"t": <unix seconds>, "event": "...", "pid": ..., ...}``. Without the variable :func:`mark` returns
at once; nothing is written and nothing heavy is imported (this module needs only the standard library,
so the config and worker modules can use it).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "HARDSEG_TIMELINE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(event: str, t: float | None = None, **extra: Any) -> None:
    """Append ``event`` (at ``t``, default now) to the timeline file, if one is set. One ``write`` of one
    short line in append mode, so lines of concurrent processes do not interleave."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"t": time.time() if t is None else t, "event": event, "pid": os.getpid(), **extra})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def process_start() -> float:
    """This process's start (unix seconds) from ``/proc``; now where that cannot be read."""
    try:
        with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()

"""The loop in one plain process, without Ray or MLflow.

This is the bare-loop baseline for overhead benchmarks and the way to run on
a machine without Ray (e.g. a GPU box)::

    python -m hardseg.trainables.local [CONFIG.yaml] [--set key=value ...] [--out DIR]

With ``--out DIR`` a run that was killed resumes from ``DIR/checkpoint_latest`` when started again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from hardseg.config import HardsegConfig, load_config
from hardseg.errors import HardsegError, NonFiniteLoss
from hardseg.keys import FAILURE, VISUALS
from hardseg.trainables.best import BestStore
from hardseg.trainables.checkpoints import CHECKPOINT_FILE
from hardseg.trainables.loop import fit
from hardseg.trainables.progress import set_bar_factory


class LocalSession:
    """Rank 0 of 1; checkpoints are kept under ``out_dir/checkpoint_latest``, the best model once under
    ``out_dir/best`` (in memory without ``out_dir``); per-iteration logs collect in ``logs``."""

    rank = 0
    world_size = 1

    def __init__(self, out_dir: Path | None = None, device: str | None = None,
                 on_report: Callable[[dict[str, Any], Path | None], None] | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.out_dir = out_dir
        self.on_report = on_report
        self.history: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.best_store = BestStore.local(out_dir / "best") if out_dir is not None else BestStore()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def log(self, metrics: dict[str, Any]) -> None:
        if VISUALS not in metrics:
            self.logs.append(dict(metrics))

    def load_checkpoint(self) -> dict[str, Any] | None:
        if self.out_dir is None or not (self.out_dir / "checkpoint_latest" / CHECKPOINT_FILE).is_file():
            return None
        return torch.load(self.out_dir / "checkpoint_latest" / CHECKPOINT_FILE, map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.history.append(dict(metrics))
        if self.on_report is not None:
            self.on_report(metrics, checkpoint_dir)
        if self.out_dir is not None and checkpoint_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dest = self.out_dir / "checkpoint_latest"
            tmp = self.out_dir / "checkpoint_tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            # moved, not copied: the folder is the loop's new temporary one, which it deletes after this call
            # (a rename on one file system; a PSPNet-R50 + HL checkpoint is 465 MB)
            shutil.move(checkpoint_dir, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)


def run_local(cfg: HardsegConfig, out_dir: Path | None = None, device: str | None = None) -> list[dict[str, Any]]:
    """Train in this process; returns the per-epoch metrics. A non-finite loss ends the history
    with its failure report (``{"epoch": n, "error": "non-finite loss: ..."}``) instead of raising."""
    session = LocalSession(out_dir, device)
    try:
        fit(cfg, session)
    except NonFiniteLoss as err:
        session.history.append(err.as_report())
    return session.history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hardseg.trainables.local", description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", help="run config YAML (default: the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, help="folder for checkpoints and metrics.json")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if sys.stdout.isatty():  # a bar within each epoch (hardseg.trainables.progress)
            set_bar_factory(tqdm)
        history = run_local(cfg, args.out, args.device)
    except HardsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(history, indent=1))
    return 0 if history and FAILURE not in history[-1] else 1


if __name__ == "__main__":
    sys.exit(main())

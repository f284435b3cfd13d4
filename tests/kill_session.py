"""A plain-process run that SIGKILLs itself at one iteration (the resume test runs it as a subprocess).

    python tests/kill_session.py OUT_DIR ITERATION KEY=VALUE ...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from hardseg.config import load_config
from hardseg.trainables.local import LocalSession
from hardseg.trainables.loop import fit


class KillAtSession(LocalSession):
    """A :class:`LocalSession` that kills its own process (SIGKILL) at its log of iteration ``at``."""

    def __init__(self, out_dir: Path, at: int):
        super().__init__(out_dir, "cpu")
        self.at = at

    def log(self, metrics: dict[str, Any]) -> None:
        super().log(metrics)
        if metrics.get("iteration") == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    out, at, *overrides = sys.argv[1:]
    fit(load_config(None, overrides), KillAtSession(Path(out), int(at)))

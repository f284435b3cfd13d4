"""The best evaluation so far and where its weights are kept.

Every evaluated step's ``val/miou`` (:data:`BEST_METRIC`) is compared with the best so far
(:class:`BestModel`; a tie keeps the earlier step, NaN never wins). Every DDP rank sums the same
confusion matrices, so every rank takes the same decision and keeps the same CPU copy of the
inference weights. Those weights are written once per change to the session's :class:`BestStore`,
never into each checkpoint (:func:`hardseg.trainables.checkpoints.save_checkpoint`); the final
checkpoint's exported model is the best one, and the last report evaluates it on the evaluation
domains (:func:`hardseg.trainables.evaluation.evaluate_best_model`).
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
import torch.nn as nn

from hardseg import keys
from hardseg.trainables.schedule import EPOCH

BEST_METRIC = keys.MIOU  # the validation metric that picks the best epoch


class BestModel:
    """The best evaluation so far by ``val/<BEST_METRIC>`` and a CPU copy of its inference weights.

    ``epoch`` is the 1-based step in the run's ``unit`` (the epoch, or the iteration of an iteration
    schedule; 0: nothing evaluated yet); ``val`` holds that evaluation's metrics. A tie keeps the
    earlier one; a NaN score never wins.
    """

    def __init__(self, unit: str = EPOCH) -> None:
        self.unit = unit
        self.epoch = 0
        self.val: dict[str, float] = {}
        self.weights: dict[str, torch.Tensor] | None = None

    @property
    def score(self) -> float:
        return self.val.get(BEST_METRIC, -math.inf)

    def update(self, epoch: int, val: dict[str, float], model: nn.Module) -> bool:
        """Keep ``model``'s weights if ``val`` beats the best so far; True if it did."""
        if not val.get(BEST_METRIC, math.nan) > self.score:
            return False
        self.epoch, self.val = epoch, dict(val)
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def model(self, like: nn.Module) -> nn.Module:
        """A copy of ``like`` (the current inference model) holding the best weights."""
        best = copy.deepcopy(like)
        if self.weights is not None:
            best.load_state_dict(self.weights)
        return best.eval()

    def state_dict(self, weights: bool = True) -> dict[str, Any]:
        """``weights=False``: what a checkpoint keeps (the weights are in the :class:`BestStore`)."""
        return {"epoch": self.epoch, "val": self.val, "weights": self.weights if weights else None}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.epoch, self.val, self.weights = state["epoch"], dict(state["val"]), state["weights"]

    def metrics(self) -> dict[str, float]:
        """``best/<unit>`` (``best/epoch`` or ``best/iteration``) and ``best/val/<metric>``."""
        return {f"{keys.BEST_PREFIX}{self.unit}": self.epoch,
                **{f"{keys.BEST_PREFIX}{keys.VAL_PREFIX}{k}": v for k, v in self.val.items()}}


class BestStore:
    """Where the best model's weights are kept once, apart from the checkpoints: ``best-<step>.pt``
    files in a folder of a pyarrow filesystem (the run's storage, local or a URI), or in memory
    (``fs`` None). A checkpoint names its file; files no kept checkpoint names are deleted."""

    def __init__(self, fs: pafs.FileSystem | None = None, folder: str = ""):
        self.fs, self.folder = fs, folder.rstrip("/")
        self._memory: dict[str, bytes] = {}

    @classmethod
    def local(cls, folder: Path) -> "BestStore":
        return cls(pafs.LocalFileSystem(), str(folder))

    @classmethod
    def at(cls, location: str) -> "BestStore":
        """A folder given as a local path or a URI (``s3://``, ``gs://``, ...; pyarrow's filesystems)."""
        if "://" not in location:
            return cls.local(Path(location))
        fs, path = pafs.FileSystem.from_uri(location)
        return cls(fs, path)

    @staticmethod
    def name_of(step: int) -> str:
        return f"best-{step}.pt"

    def save(self, name: str, obj: Any) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        if self.fs is None:
            self._memory[name] = buf.getvalue()
            return
        self.fs.create_dir(self.folder, recursive=True)
        tmp = f"{self.folder}/{name}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        self.fs.move(tmp, f"{self.folder}/{name}")

    def load(self, name: str) -> Any:
        if self.fs is None:
            data = self._memory[name]
        else:
            with self.fs.open_input_stream(f"{self.folder}/{name}") as f:
                data = f.read()
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    def names(self) -> list[str]:
        if self.fs is None:
            return sorted(self._memory)
        found = self.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True))
        return sorted(f.base_name for f in found if f.base_name.startswith("best-") and f.base_name.endswith(".pt"))

    def keep_only(self, names: set[str]) -> None:
        for name in self.names():
            if name not in names:
                if self.fs is None:
                    self._memory.pop(name, None)
                else:
                    self.fs.delete_file(f"{self.folder}/{name}")

"""The per-worker training and evaluation loop.

Read it like torchvision's ``references/segmentation/train.py``: the building
blocks first, the story last. :func:`fit` resolves the :class:`StepSettings`
once (device, AMP, channels_last, evaluation mode, DDP size), builds data,
model, objective, optimiser and the run's :class:`~hardseg.trainables.schedule.Schedule`
(epochs or iterations, the lr of each iteration), resumes the :class:`TrainingState`
from a checkpoint if the session has one (the same iteration, batches and RNG
states), then alternates :func:`train_steps` and :func:`evaluate`: a report every
epoch (epoch schedules) or at every evaluation or checkpoint (iteration schedules),
with a checkpoint folder from rank 0 at ``train.checkpoint_interval``, and a
per-iteration log every ``train.log_interval`` iterations (:class:`IterationMeter`).
It knows nothing of Ray or MLflow: a :class:`Session` supplies the rank, device,
DDP wrapping, checkpoint and report hooks (``ray_worker.RaySession`` under Ray
Train, ``local.LocalSession`` in a plain process, ``platform.tune_session.
TuneSession`` in a one-worker sweep trial; a test's session may inject faults).

A non-finite loss raises :class:`~hardseg.errors.NonFiniteLoss` out of
:func:`fit`; the caller fails the run with its message (the Ray Train worker
reports it instead of raising, so that Ray does not retry a deterministic
failure, see ``ray_worker.fit_worker``).

Best model and evaluation domains: every evaluated epoch's ``val/miou`` is
compared with the best so far (:class:`BestModel`; a tie keeps the earlier
epoch, NaN never wins). Every DDP rank sums the same confusion matrices, so
every rank takes the same decision and keeps the same CPU copy of the inference
weights. Those weights are written once per change to the session's
:class:`BestStore`, never into each checkpoint; the final checkpoint's exported
model (``model_export.pt``, MLflow's ``model/model_export.pt``) is the best one. At the last epoch the best
model is evaluated on each ``data.eval_domains`` entry (a split such as
``fog-3`` or a ``cityscapes:PATH``/``folder:PATH`` spec, see
:mod:`hardseg.data.domains`) and the last report adds

* ``best/epoch`` and ``best/val/<metric>``: the best epoch and its validation metrics;
* ``<domain>/<metric>``: the best model on each domain (``fog-3/miou``,
  ``fog-3/band_iou``, ``fog-3/small_iou``, ``fog-3/thin_iou``, ``fog-3/iou/<class>``, ...);
* ``robustness/<family>/miou``: mean over the evaluated severities of
  ``<family>-<s>/miou`` / ``best/val/miou`` (:mod:`hardseg.robustness`);
  with ``corrupt:`` domains also ``robustness/mPC/miou`` and ``robustness/rPC/miou``;
* ``test/<metric>``: the best model on ``data.test_split`` when set (the split the
  final numbers are reported on; the best epoch is still chosen on val).

``val/<metric>`` stays the current epoch's model at every epoch.

Input pipeline (:func:`build_train_loader`): ``data.loader_workers`` persistent
worker processes decode and augment (``pin_memory`` and ``non_blocking``
copies on CUDA). Every training sample's augmentation is seeded from
``(seed, epoch, index)`` (:class:`SeededSamples`), so a seed reproduces every
metric exactly whatever the number of loader workers.

Evaluation (:func:`evaluate`): ``eval.batch_size`` images at a time, under
autocast when AMP is on, either whole or by sliding windows
(``eval.mode: slide``, :func:`slide_logits`) for images too large for one pass.

No host synchronisation per step on CUDA (:func:`train_one_epoch`): loss
terms are summed on the device and read once per epoch; a non-finite loss or
gradient norm is recorded on the device with its step and checked every
:data:`FINITE_CHECK_EVERY` steps (every step on CPU, where checking is free).
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from hardseg import keys
from hardseg.config import RunConfig
from hardseg.data import build_dataset, class_pixel_frequencies, dataset_info
from hardseg.data.domains import build_domain, parse_domains
from hardseg.errors import ConfigError, NonFiniteLoss
from hardseg.models import SegOutput, build_model, predict_classes
from hardseg.models.pretrained import load_weights
from hardseg.strategies import Objective, StrategyContext, TrainingModel
from hardseg.trainables.metrics import SegMetrics
from hardseg.trainables.progress import epoch_bar
from hardseg.trainables.tta import tta_probs
from hardseg.trainables.schedule import EPOCH, ITERATION, Schedule
from hardseg.robustness import robustness

CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_FILE = "model_export.pt"
BEST_METRIC = "miou"  # the validation metric that picks the best epoch
FINITE_CHECK_EVERY = 32  # CUDA steps between reads of the device-side non-finite flag


class Session(Protocol):
    """What the loop needs from its runtime (Ray Train or a plain process)."""

    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...
    def load_checkpoint(self) -> dict[str, Any] | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...
    # Optional: ``log(metrics)`` for the per-iteration logs and the visuals (every rank calls it at the same
    # iterations; without it they are dropped), and ``best_store`` (a :class:`BestStore`, where the best
    # model is kept once; without it, in memory).


@dataclass(frozen=True)
class StepSettings:
    """How this worker runs its training and evaluation steps; :meth:`resolve` builds it once in :func:`fit`.

    ``amp``: autocast, in ``amp_dtype`` (None: float16 on CUDA, bfloat16 on CPU; float16 training also
    uses a GradScaler), from ``train.amp`` (:func:`resolve_amp`);
    ``channels_last``: NHWC inputs; ``slide``: ``(crop, stride)`` for sliding-window evaluation
    (None: whole images); ``world_size``: DDP ranks, over which losses and the non-finite flag are
    reduced; ``epochs``: the run's length, for the loss schedule and the progress bar;
    ``check_every``: steps between reads of the non-finite flag (None: :data:`FINITE_CHECK_EVERY`
    on CUDA, 1 on CPU).
    """

    device: torch.device
    amp: bool = False
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    slide: tuple[tuple[int, int], tuple[int, int]] | None = None
    tta: tuple[tuple[float, ...], bool, tuple[int, int] | None] | None = None  # eval.tta: (scales, flip, img_scale)
    world_size: int = 1
    epochs: int = 1
    check_every: int | None = None

    @classmethod
    def resolve(cls, cfg: RunConfig, device: torch.device, world_size: int) -> "StepSettings":
        """``train.amp``, ``train.channels_last`` (``auto``: on for CUDA), ``eval.mode`` and ``train.epochs``."""
        dtype = resolve_amp(cfg.train.amp, device)
        return cls(device, amp=dtype is not None, amp_dtype=dtype,
                   channels_last=resolve_flag(cfg.train.channels_last, device), slide=slide_settings(cfg),
                   tta=(tuple(cfg.eval.tta.scales), cfg.eval.tta.flip, cfg.eval.tta.img_scale)
                   if cfg.eval.tta else None,
                   world_size=world_size, epochs=cfg.train.epochs or 1)

    @property
    def finite_check_every(self) -> int:
        return self.check_every or (FINITE_CHECK_EVERY if self.device.type == "cuda" else 1)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: no padding, so the shards'
    confusion matrices add up to exactly the whole split's."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def resolve_flag(value: str, device: torch.device) -> bool:
    """``auto`` means on for CUDA, off for CPU."""
    return device.type == "cuda" if value == "auto" else value == "on"


def resolve_amp(value: str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` → the autocast dtype, None for full precision: ``auto`` is fp16 on CUDA and off on
    CPU, ``on`` the device's half type (fp16 on CUDA, bf16 on CPU), ``fp16``/``bf16`` as named."""
    if value == "auto":
        value = "fp16" if device.type == "cuda" else "off"
    if value == "on":
        value = "fp16" if device.type == "cuda" else "bf16"
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(value)


def poly_lambda(total_steps: int, power: float, warmup_steps: int = 0):
    """Poly LR (1 − t/T)^power after a linear warm-up from 0, as a ``LambdaLR`` factor (benchmarks' bare loops)."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power
    return f


class ScheduledLR:
    """Sets every parameter group's learning rate from a :class:`~hardseg.trainables.schedule.Schedule`
    before each iteration, each group from its own base rate (``train.lr`` × its ``lr_mult``), as mmcv's
    ``LrUpdaterHook``. ``last_epoch`` counts the iterations done (the name torch's schedulers use)."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule):
        self.optimizer, self.schedule = optimizer, schedule
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.schedule.lr_at(self.last_epoch, base)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch, self.base_lrs = state["last_epoch"], list(state["base_lrs"])
        self._apply()


def build_optimizer(cfg: RunConfig, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW over a :class:`TrainingModel`'s ``param_groups()``: the network, then each strategy's
    modules as their own group at ``train.lr`` × the group's ``lr_mult`` (``strategy_params.hl.lr_mult``);
    any other module is one group. ``fused`` (CUDA) also lets GradScaler skip its per-step host sync."""
    t = cfg.train
    found = model.param_groups() if isinstance(model, TrainingModel) \
        else [{"params": list(model.parameters()), "lr_mult": 1.0}]
    groups = [{**g, "lr": t.lr * g["lr_mult"]} for g in found]
    extra = {"fused": True} if fused else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **extra)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, **extra)


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from (seed, epoch, rank, ...), stable across runs."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def configure_backends(cfg: RunConfig) -> None:
    """``train.cudnn_benchmark`` and ``train.deterministic`` (process-wide PyTorch switches).

    Deterministic mode warns instead of failing where an op has no deterministic
    kernel (CUDA's bilinear upsampling backward, which every model here uses).
    """
    det = cfg.train.deterministic
    torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not det
    torch.backends.cudnn.deterministic = det
    torch.use_deterministic_algorithms(det, warn_only=True)
    if det:  # cuBLAS needs a fixed workspace for reproducible GEMMs (read when CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def convert_sync_bn(model: nn.Module, enabled: bool, device: torch.device, world_size: int) -> nn.Module:
    """``model.sync_bn``: BatchNorm → SyncBatchNorm for DDP on several GPUs.

    A no-op on CPU (gloo; PyTorch's SyncBatchNorm needs a GPU) and with one
    worker, where plain BatchNorm already sees the whole batch.
    """
    if not enabled or world_size < 2 or device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# -- input pipeline ---------------------------------------------------------------
def loader_workers(cfg: RunConfig) -> int:
    """``data.loader_workers``, by default one per CPU of the training worker beyond its own."""
    if cfg.data.loader_workers is not None:
        return cfg.data.loader_workers
    return max(0, int(cfg.ray.cpus_per_worker) - 1)


class SeededSamples(Dataset):
    """``ds[(epoch, index)]`` = ``dataset[index]`` with the augmentation seeded from ``(seed, epoch, index)``.

    The sample's random draws come from torch's CPU generator, reseeded here and
    restored afterwards, so they do not depend on which loader worker (or the
    training process itself) prepares the sample, nor on the model's draws.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed_for(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` from ``sampler``; :meth:`set_epoch` reshuffles as the inner sampler allows."""

    def __init__(self, sampler: Sampler[int], seed: int):
        self.sampler, self.seed, self.epoch, self.skip = sampler, seed, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start pass ``epoch``; ``skip``: leave out its first samples (a run resumed within a pass)."""
        self.epoch, self.skip = epoch, skip
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        elif isinstance(self.sampler, RandomSampler) and self.sampler.generator is not None:
            self.sampler.generator.manual_seed(seed_for(self.seed, epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in itertools.islice(self.sampler, self.skip, None))

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def _loader_options(cfg: RunConfig, device: torch.device, persistent: bool) -> dict[str, Any]:
    workers = loader_workers(cfg)
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        opts.update(prefetch_factor=cfg.data.prefetch_factor, persistent_workers=persistent)
    return opts


def build_train_loader(cfg: RunConfig, train_set: Dataset, rank: int, world_size: int,
                       device: torch.device) -> tuple[DataLoader, EpochSampler]:
    """The training batches of this rank and the sampler whose ``set_epoch`` starts each epoch."""
    if cfg.train.shuffle:
        inner: Sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=cfg.seed,
                                            drop_last=True) if world_size > 1 \
            else RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed))
    else:
        inner = DistributedSampler(train_set, world_size, rank, shuffle=False, drop_last=True) \
            if world_size > 1 else SequentialSampler(train_set)
    sampler = EpochSampler(inner, cfg.seed)
    # Its own generator: the loader's worker base seed must not draw from the global one the model uses.
    loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_size=cfg.train.batch_size, sampler=sampler,
                        drop_last=True, generator=torch.Generator().manual_seed(seed_for(cfg.seed, rank)),
                        **_loader_options(cfg, device, persistent=True))
    return loader, sampler


class TrainBatches:
    """The training batches as one endless, deterministic sequence of passes over the shard.

    Pass ``p`` is the sampler's epoch ``p``: at its start the model's RNG is reseeded from
    ``(seed, p, rank)`` and the sampler reshuffles (augmentations are seeded per sample,
    :class:`SeededSamples`), so an epoch schedule's epoch ``p`` and an iteration schedule's pass ``p``
    see the same batches. :meth:`seek` puts a resumed run back at its position (within a pass: the
    sampler skips the samples already seen; the RNG comes from the checkpoint).
    """

    def __init__(self, loader: DataLoader, sampler: EpochSampler, seed: int, rank: int, bar_total: int | None = None):
        self.loader, self.sampler, self.seed, self.rank = loader, sampler, seed, rank
        self.per_pass = len(loader)
        self.bar_total = bar_total  # epoch schedules: the number of epochs, for the progress bar
        self.done = 0  # batches handed out
        self._it: Iterator | None = None

    def seek(self, done: int) -> None:
        self.done, self._it = done, None
        epoch, pos = divmod(done, self.per_pass)
        if pos:
            self.sampler.set_epoch(epoch, skip=pos * self.loader.batch_size)
            self._it = iter(self.loader)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self):
        epoch, pos = divmod(self.done, self.per_pass)
        if pos == 0:
            torch.manual_seed(seed_for(self.seed, epoch, self.rank))
            self.sampler.set_epoch(epoch)
            self._it = iter(epoch_bar(self.loader, epoch, self.bar_total) if self.bar_total else self.loader)
        assert self._it is not None
        self.done += 1
        return next(self._it)


def eval_batch_size(cfg: RunConfig) -> int:
    return cfg.eval.batch_size or cfg.train.batch_size


def build_eval_loader(cfg: RunConfig, ds: Dataset, rank: int, world_size: int, device: torch.device,
                      persistent: bool = False) -> DataLoader:
    """``eval.batch_size`` batches of ``ds``, each rank its own shard."""
    return DataLoader(ds, batch_size=eval_batch_size(cfg), sampler=ShardSampler(len(ds), rank, world_size),
                      **_loader_options(cfg, device, persistent))


# -- model, best epoch and checkpointed state ------------------------------------------
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


def rng_states() -> dict[str, Any]:
    """This process's random states: torch (CPU and every CUDA device), numpy and Python's."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's :func:`rng_states`, in rank order (a collective: every rank calls it)."""
    mine = rng_states()
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * world_size
        dist.all_gather_object(out, mine)
        return out
    return [mine]


@dataclass
class TrainingState:
    """What a checkpoint saves and a resumed run restores (``checkpoint.pt``): model, optimiser,
    schedule, grad scaler, the iterations done (the sampler's position), every rank's RNG states,
    the best evaluation so far (its weights by name in the :class:`BestStore`, not copied) and the
    best files the kept checkpoints name."""

    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scheduler: Any  # ScheduledLR
    scaler: torch.amp.GradScaler | None
    best: BestModel
    store: BestStore = field(default_factory=BestStore)
    kept: list[str] = field(default_factory=list)  # best files of the checkpoints on disk, oldest first
    done: int = 0  # iterations done

    def state_dict(self, done: int, cfg: RunConfig, rng: list[dict[str, Any]], schedule: Schedule) -> dict[str, Any]:
        """The state after ``done`` iterations, with the run's config."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "iteration": done, "unit": schedule.unit, "epoch": schedule.step_of(done) - 1,
                "best": self.best.state_dict(weights=False),
                "best_file": BestStore.name_of(self.best.epoch) if self.best.weights is not None else None,
                "kept": list(self.kept), "rng": rng, "config": cfg.model_dump(mode="json")}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint's state; returns the iterations already done (RNG states: :meth:`restore_rng`)."""
        self.best.load_state_dict(state.get("best"))
        if state.get("best_file"):
            self.best.weights = self.store.load(state["best_file"])["model"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.kept = list(state.get("kept", []))
        self.done = state["iteration"]
        return self.done


def build_training_model(cfg: RunConfig, info, class_frequencies: np.ndarray | None, meta: bool = False
                         ) -> tuple[TrainingModel, Objective]:
    """The network of ``cfg.model`` with the strategies' modules, for a dataset described by ``info``.

    ``meta``: build the network and the modules on PyTorch's meta device (no
    memory, no init cost), which is all :func:`check_strategies_fit` needs.
    Pretrained and warm-start weights (``model.pretrained``, ``model.init_from``)
    are loaded, or on the meta device only checked; ``tm.weight_reports``
    says what each file gave.

    Raises ConfigError for strategy settings that do not fit the model or the
    dataset (an SR exit or a C2F feature the model lacks, C2F without a
    class hierarchy).
    """
    ctx = StrategyContext(num_classes=info.num_classes, ignore_index=info.ignore_index,
                          class_frequencies=class_frequencies, hierarchy=info.hierarchy,
                          aux_weight=cfg.model.aux_weight, palette=info.colors(), average=cfg.loss.average)
    objective = Objective(cfg.strategies, cfg.strategy_params, ctx)
    with torch.device("meta") if meta else nullcontext():
        net = build_model(cfg.model.name, info.num_classes, aux=cfg.model.aux, width=cfg.model.width,
                          norm=cfg.model.norm, encoder=cfg.model.encoder, align_corners=cfg.model.align_corners)
        tm = TrainingModel(net, objective)
    # model.pretrained / model.init_from (models/pretrained.py); on the meta device only checked
    tm.weight_reports = load_weights(tm.net, tm.export(), cfg.model, load=not meta, training=tm)
    return tm, objective


def check_strategies_fit(cfg: RunConfig) -> list:
    """Build the training model on the meta device so that model- and dataset-dependent strategy
    settings and weight files fail on the driver, before anything is logged; ConfigError names the key.
    Returns the weight files' load reports (:class:`hardseg.models.pretrained.LoadReport`)."""
    info = dataset_info(cfg.data)
    tm, _ = build_training_model(cfg, info, np.ones(info.num_classes), meta=True)
    return tm.weight_reports


# -- training --------------------------------------------------------------------------
def autocast_for(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """Mixed precision as the loop uses it: ``dtype`` (None: float16 on CUDA, bfloat16 on CPU); a null
    context when off."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16))


def grad_norm(model: nn.Module) -> Tensor:
    """The global L2 norm of the gradients, on the device (no host read)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


class IterationMeter:
    """What the per-iteration log reads every ``train.log_interval`` iterations: loss-term sums (on the
    device), images, time waiting for data, and training time (paused while the loop evaluates)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.n = self.images = 0
        self.data_s = self.train_s = 0.0
        self._t: float | None = None

    def resume(self) -> None:
        self._t = time.perf_counter()

    def pause(self) -> None:
        if self._t is not None:
            self.train_s += time.perf_counter() - self._t
            self._t = None

    def add(self, terms: dict[str, Tensor], images: int, data_s: float) -> None:
        for key, value in terms.items():
            v = value.detach().float()
            self.sums[key] = self.sums[key] + v if key in self.sums else v
        self.n += 1
        self.images += images
        self.data_s += data_s

    def read(self, done: int, lrs: list[float], settings: StepSettings) -> dict[str, Any]:
        """The log after ``done`` iterations, with ``lrs`` the last iteration's learning rate of each
        parameter group (one device sync, one host read); then a new window starts."""
        device, world_size = settings.device, settings.world_size
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.pause()
        means = _mean_over_ranks({k: v / max(1, self.n) for k, v in self.sums.items()}, world_size, device)
        p = keys.ITER_PREFIX
        log: dict[str, Any] = {ITERATION: done, **{f"{p}{k}": v for k, v in means.items()}}
        log.update({f"{p}lr/{i}": lr for i, lr in enumerate(lrs)})
        log[f"{p}data_time_s"] = self.data_s / max(1, self.n)
        log[f"{p}step_time_s"] = self.train_s / max(1, self.n)
        log[f"{p}images_per_s"] = self.images * world_size / max(1e-9, self.train_s)
        if device.type == "cuda":
            log[f"{p}max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        self.__init__()
        self.resume()
        return log


def train_steps(model: nn.Module, objective: Objective, batches: Iterator, start: int, stop: int,
                optimizer: torch.optim.Optimizer, scheduler, settings: StepSettings, schedule: Schedule,
                scaler: torch.amp.GradScaler | None = None, meter: IterationMeter | None = None,
                on_log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, float]:
    """Iterations ``start`` … ``stop − 1`` (0-based) from ``batches``; returns their mean loss terms and throughput.

    Nothing is read back to the host per step: loss terms are summed on the device and read at the
    end. A non-finite loss, or (without a GradScaler, which skips such steps itself) a non-finite
    gradient norm, is recorded on the device with its iteration; the flag is read every
    ``settings.finite_check_every`` steps, before the optimiser step, and at the end. Every
    ``schedule.log_interval`` iterations ``on_log`` gets the :class:`IterationMeter`'s log (the one
    device sync of those steps).

    Raises :class:`~hardseg.errors.NonFiniteLoss` naming the epoch and step (epoch schedules) or the
    iteration where it first happened. DDP ranks agree on it (the flag is reduced over ranks), so
    every rank stops at the same check.
    """
    model.train()
    device, world_size = settings.device, settings.world_size
    check_every = settings.finite_check_every
    meter = meter or IterationMeter()
    sums: dict[str, Tensor] = {}
    bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: every step finite so far
    bad_values = torch.zeros(2, device=device)  # loss and gradient norm at bad_step
    n_images, step_times = 0, []
    amp = autocast_for(device, settings.amp, settings.amp_dtype)
    start_t = time.perf_counter()
    first_step_unix = time.time()
    meter.resume()
    for it in range(start, stop):
        t_data = time.perf_counter()
        images, target = next(batches)
        t0 = time.perf_counter()
        images = images.to(device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with amp:
            out = SegOutput.from_dict(model(images))
            terms = objective.losses(out, target, progress=schedule.progress(it))
        loss = terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            norm = torch.zeros((), device=device)  # the scaler checks (and skips) non-finite gradients
        else:
            loss.backward()
            norm = grad_norm(model).to(device)
        values = torch.stack([loss.detach().float(), norm.float()])
        first = (bad_step == 0) & ~torch.isfinite(values).all()
        bad_step = torch.where(first, it + 1, bad_step)
        bad_values = torch.where(first, values, bad_values)
        logs = on_log is not None and schedule.logs(it + 1)
        if (it + 1 - start) % check_every == 0 or it + 1 == stop or logs:
            _raise_if_not_finite(bad_step, bad_values, schedule, world_size)
        lrs = [g["lr"] for g in optimizer.param_groups] if logs else []  # this iteration's, before the schedule moves
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        for key, value in terms.items():
            v = value.detach().float()
            sums[key] = sums[key] + v if key in sums else v
        n_images += images.shape[0]
        meter.add(terms, images.shape[0], t0 - t_data)
        step_times.append(time.perf_counter() - t0)
        if logs:
            on_log(meter.read(it + 1, lrs, settings))
    meter.pause()
    means = _mean_over_ranks(sums, world_size, device)  # the interval's one host read
    elapsed = time.perf_counter() - start_t
    steps = stop - start
    train = keys.TRAIN_PREFIX
    stats = {f"{train}{k}": v / max(1, steps) for k, v in means.items()}
    stats[f"{train}images_per_s"] = n_images * world_size / elapsed
    stats[f"{train}step_time_s"] = float(np.median(step_times)) if step_times else float("nan")
    stats[f"{train}{'epoch' if schedule.unit == EPOCH else 'interval'}_time_s"] = elapsed
    stats[f"{train}first_step_unix"] = first_step_unix
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


def train_one_epoch(model: nn.Module, objective: Objective, loader, optimizer: torch.optim.Optimizer,
                    scheduler, epoch: int, settings: StepSettings,
                    scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass over ``loader`` (0-based ``epoch`` of ``settings.epochs``) as :func:`train_steps`."""
    steps = len(loader)
    schedule = Schedule(EPOCH, settings.epochs * steps, steps, lr=0.0, log_interval=0)
    batches = iter(epoch_bar(loader, epoch, settings.epochs))
    return train_steps(model, objective, batches, epoch * steps, (epoch + 1) * steps, optimizer, scheduler,
                       settings, schedule, scaler)


def _raise_if_not_finite(bad_step: Tensor, bad_values: Tensor, schedule: Schedule, world_size: int) -> None:
    """Read the device-side flag (one host sync); every rank raises at the first bad iteration of any rank."""
    step = bad_step
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        never = torch.iinfo(torch.int64).max
        step = torch.where(bad_step > 0, bad_step, never)
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
        step = torch.where(step == never, 0, step)
    s = int(step.item())
    if s == 0:
        return
    if schedule.unit == EPOCH:
        epoch, in_epoch = divmod(s - 1, schedule.iters_per_epoch)
        where, epoch = f"epoch {epoch + 1}, step {in_epoch + 1}", epoch + 1
    else:
        where, epoch = f"iteration {s}", s
    if int(bad_step.item()) == s:
        loss, norm = bad_values.tolist()
        raise NonFiniteLoss(f"non-finite loss: loss became {loss} (gradient norm {norm}) at {where}", epoch)
    raise NonFiniteLoss(f"non-finite loss: loss or gradients stopped being finite on another rank at {where}", epoch)


def _mean_over_ranks(values: dict[str, Tensor], world_size: int, device: torch.device | None = None
                     ) -> dict[str, float]:
    """Read per-rank epoch sums (device scalars) and average them over DDP ranks, so reported losses are global."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.stack([values[k].to(device or values[k].device, torch.float64) for k in keys])
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t = t / world_size
    return dict(zip(keys, t.tolist()))


# -- evaluation ------------------------------------------------------------------------
def _logits(out: Any) -> Tensor:
    return out.logits if isinstance(out, SegOutput) else out


def slide_windows(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis, as mmsegmentation's ``slide`` test mode: a grid of ``stride`` steps,
    the last window moved back to end at the border; one window when ``crop`` covers ``size``."""
    crop = min(crop, size)
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, size - crop) for i in range(n)]


@torch.no_grad()
def slide_logits(net: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int],
                 channels_last: bool = False) -> Tensor:
    """Logits (N, C, H, W) of ``images`` by sliding ``crop`` windows ``stride`` apart and averaging the
    windows' logits (float32) where they overlap. Memory: one window of the batch at a time, plus the
    full-size float32 logits."""
    _, _, h, w = images.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    total: Tensor | None = None
    count = torch.zeros((1, 1, h, w), device=images.device)
    for y in slide_windows(h, ch, stride[0]):
        for x in slide_windows(w, cw, stride[1]):
            window = images[:, :, y:y + ch, x:x + cw]
            if channels_last:
                window = window.contiguous(memory_format=torch.channels_last)
            logits = _logits(net(window)).float()
            if total is None:
                total = logits.new_zeros((images.shape[0], logits.shape[1], h, w))
            total[:, :, y:y + ch, x:x + cw] += logits
            count[:, :, y:y + ch, x:x + cw] += 1
    assert total is not None
    return total.div_(count)  # in place: no second full-size copy


def slide_settings(cfg: RunConfig) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(crop, stride)`` for ``eval.mode: slide`` (None: whole-image inference).

    The window defaults to ``data.augment.crop`` (what the model was trained on),
    the stride to two thirds of the window (mmsegmentation's Cityscapes configs:
    512×1024 windows, 341×683 stride).
    """
    if cfg.eval.mode != "slide":
        return None
    crop = cfg.eval.crop
    if crop is None:
        c = cfg.data.augment.crop
        if c is None:
            raise ConfigError("eval.mode=slide needs a window: set eval.crop (or data.augment.crop), e.g. [512, 1024]")
        crop = (c, c) if isinstance(c, int) else tuple(c)
    stride = cfg.eval.stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    return tuple(crop), tuple(stride)  # type: ignore[return-value]


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, metrics: SegMetrics, settings: StepSettings) -> dict[str, float]:
    """Confusion-matrix metrics over a (sharded) split, summed over ranks.

    ``settings.amp``: autocast as in training; ``settings.slide``: ``(crop, stride)`` for
    sliding-window inference (:func:`slide_logits`), else each batch in one pass; ``settings.tta``:
    test-time augmentation (:func:`inference_scores`).
    """
    net.eval()
    for images, target in loader:
        metrics.update(target, predict_classes(inference_scores(net, images.to(settings.device, non_blocking=True),
                                                                settings)))
    metrics.reduce_from_all_processes()
    return metrics.compute()


@torch.no_grad()
def inference_scores(net: nn.Module, images: Tensor, settings: StepSettings) -> Tensor:
    """Class scores (N, C, H, W) of a batch as ``settings`` say: logits of a whole or sliding-window pass,
    or with ``settings.tta`` the averaged softmax probabilities (:func:`hardseg.trainables.tta.tta_probs`)."""
    slide = settings.slide

    def one_pass(x: Tensor) -> Tensor:
        if slide is not None:
            return slide_logits(net, x, slide[0], slide[1], settings.channels_last)
        return _logits(net(x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x))

    with autocast_for(settings.device, settings.amp, settings.amp_dtype):
        if settings.tta is None:
            return one_pass(images)
        # probabilities back to the input size as the network resizes its own logits (mmseg: align_corners)
        return tta_probs(one_pass, images, *settings.tta, align_corners=getattr(net, "align_corners", False))


def _metrics_for(info) -> SegMetrics:
    return SegMetrics(info.num_classes, info.class_names, info.large_classes, info.small_classes,
                      info.thin_classes, ignore_index=info.ignore_index)


def evaluate_on_domains(model: nn.Module, cfg: RunConfig, specs: list[str],
                        loader_for: Callable[[Dataset], DataLoader], settings: StepSettings) -> dict[str, float]:
    """``{"<domain name>/<metric>": value}`` for every domain spec (:mod:`hardseg.data.domains`; bad specs or
    data raise DataError); ``loader_for`` batches a domain's dataset."""
    out: dict[str, float] = {}
    for domain in parse_domains(specs):
        ds = build_domain(cfg.data, domain)
        res = evaluate(model, loader_for(ds), _metrics_for(ds.info), settings)
        out.update({f"{domain.name}/{k}": v for k, v in res.items()})
    return out


def evaluate_best_on_domains(cfg: RunConfig, session: Session, best: BestModel, inference: nn.Module,
                             settings: StepSettings) -> dict[str, float]:
    """The best model on every ``cfg.data.eval_domains`` entry, plus ``best/...`` and robustness (module docstring)."""
    best_model = best.model(inference)

    def loader_for(ds: Dataset) -> DataLoader:
        return build_eval_loader(cfg, ds, session.rank, session.world_size, session.device)

    domains = evaluate_on_domains(best_model, cfg, cfg.data.eval_domains, loader_for, settings)
    out: dict[str, float] = best.metrics()
    out.update(domains)
    out.update(robustness(domains, BEST_METRIC, clean=best.score))
    if cfg.data.test_split:  # held out: reported here only, never used to pick an epoch
        test_set = build_dataset(cfg.data, cfg.data.test_split, train=False)
        res = evaluate(best_model, loader_for(test_set), _metrics_for(test_set.info), settings)
        out.update({f"{keys.TEST_PREFIX}{k}": v for k, v in res.items()})
    return out


# -- what each epoch writes: visuals, checkpoint, progress line ------------------------
def _visual_batch(loader: DataLoader, n: int = 4, window: tuple[int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``loader``, cut to their top-left ``window`` (slide mode) to bound memory."""
    images, target = next(iter(loader))
    h, w = window or images.shape[-2:]
    return images[:n, :, :h, :w], target[:n, :h, :w]


@torch.no_grad()
def _visuals(tm: TrainingModel, objective: Objective, loader: DataLoader, settings: StepSettings
             ) -> dict[str, np.ndarray]:
    """The strategies' panels (:meth:`Objective.visuals`) on the first images of ``loader``."""
    images, target = _visual_batch(loader, window=settings.slide[0] if settings.slide else None)
    images, target = images.to(settings.device), target.to(settings.device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    was_training = tm.training
    tm.eval()
    try:
        out = SegOutput.from_dict(tm(images))
        return objective.visuals(out, images, target)
    finally:
        tm.train(was_training)


def _png_bytes(visuals: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The visuals as PNG files in memory (they go with a log, never with a checkpoint)."""
    out = {}
    for name, img in visuals.items():
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
        out[name.replace("/", "_")] = buf.getvalue()
    return out


def _save_checkpoint(cfg: RunConfig, done: int, state: TrainingState, export: nn.Module,
                     rng: list[dict[str, Any]], schedule: Schedule, final: bool) -> Path:
    """A new folder with ``checkpoint.pt`` (the training state after ``done`` iterations, to resume).

    The best model so far is written once to the :class:`BestStore` (``best-<step>.pt``) when it
    changed, and best files that no kept checkpoint names are deleted (``train.keep_checkpoints``).
    The ``final`` checkpoint also holds ``model_export.pt`` (the best model; ``export``, the last
    inference model, if nothing was evaluated), which the platform logs to MLflow.
    """
    best = state.best
    if best.weights is not None:
        name = BestStore.name_of(best.epoch)
        if name not in state.store.names():
            state.store.save(name, {"model": best.weights, schedule.unit: best.epoch, "val": best.val})
        state.kept = [*state.kept, name][-cfg.train.keep_checkpoints:]
        state.store.keep_only(set(state.kept))
    d = Path(tempfile.mkdtemp(prefix="hardseg-ckpt-"))
    torch.save(state.state_dict(done, cfg, rng, schedule), d / CHECKPOINT_FILE)
    if final:
        weights = best.weights if best.weights is not None else export.state_dict()
        torch.save({"model": weights, "epoch": best.epoch or schedule.length, "unit": schedule.unit,
                    "config": cfg.model_dump(mode="json"),
                    "num_parameters": sum(p.numel() for p in export.parameters())}, d / EXPORT_FILE)
    return d


def _print_progress(schedule: Schedule, done: int, m: dict[str, Any]) -> None:
    miou = m.get("val/miou")
    label = "epoch" if schedule.unit == EPOCH else "iteration"
    parts = [f"{label} {schedule.step_of(done)}/{schedule.length}", f"loss {m.get('train/loss', float('nan')):.4f}"]
    if miou is not None:
        parts.append(f"val mIoU {miou:.4f}")
    took = m.get("train/epoch_time_s", m.get("train/interval_time_s", 0))
    parts += [f"{m.get('train/images_per_s', 0):.0f} img/s", f"{took:.1f}s"]
    print("[hardseg] " + " | ".join(parts), flush=True)


def _print_iteration(schedule: Schedule, log: dict[str, Any]) -> None:
    """The console line of a per-iteration log (every ``train.log_interval`` iterations)."""
    p = keys.ITER_PREFIX
    parts = [f"iter {log[ITERATION]}/{schedule.iters}", f"loss {log.get(f'{p}loss', float('nan')):.4f}",
             f"lr {log.get(f'{p}lr/0', float('nan')):.3e}",
             f"{log[f'{p}step_time_s']:.3f} s/it (data {log[f'{p}data_time_s']:.3f})",
             f"{log[f'{p}images_per_s']:.0f} img/s"]
    if f"{p}max_memory_allocated_bytes" in log:
        parts.append(f"mem {log[f'{p}max_memory_allocated_bytes'] / 2**30:.2f} GiB")
    print("[hardseg] " + " | ".join(parts), flush=True)


def _wants_visuals(cfg: RunConfig, schedule: Schedule, done: int, evaluated: int) -> bool:
    """``train.log_images_every``: every n-th epoch (epoch schedules) or n-th evaluation, and at the end."""
    every = cfg.train.log_images_every
    if not every:
        return False
    if done == schedule.iters:
        return True
    if schedule.unit == EPOCH:
        return schedule.step_of(done) % every == 0
    return schedule.evaluates(done) and evaluated % every == 0


# -- the story ------------------------------------------------------------------------
def fit(cfg: RunConfig, session: Session) -> dict[str, Any]:
    """Train ``cfg`` on this worker; returns the last reported metrics.

    Raises :class:`~hardseg.errors.NonFiniteLoss` on every rank when the loss or the
    gradients stop being finite; the caller decides how the run fails
    (``ray_worker.fit_worker`` reports it, so that Ray does not retry).
    """
    device = session.device
    torch.set_num_threads(cfg.train.num_threads or max(1, int(cfg.ray.cpus_per_worker)))
    configure_backends(cfg)
    settings = StepSettings.resolve(cfg, device, session.world_size)

    # Data: each sample's augmentation is seeded from (seed, pass, index), see SeededSamples.
    train_set = build_dataset(cfg.data, "train", train=True)
    info = train_set.info
    train_loader, sampler = build_train_loader(cfg, train_set, session.rank, session.world_size, device)
    val_loader = build_eval_loader(cfg, build_dataset(cfg.data, "val", train=False), session.rank,
                                   session.world_size, device, persistent=True)

    # Model and objective: the same seed on every rank gives the same init.
    torch.manual_seed(cfg.seed)
    tm, objective = build_training_model(cfg, info, class_pixel_frequencies(train_set))
    tm = convert_sync_bn(tm, cfg.model.sync_bn, device, session.world_size)
    tm = tm.to(device)
    if settings.channels_last:
        tm = tm.to(memory_format=torch.channels_last)

    # Optimiser, the schedule's lr per iteration (trainables/schedule.py), AMP's gradient scaler.
    optimizer = build_optimizer(cfg, tm, fused=device.type == "cuda")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than a worker's share of the "
                         f"{len(train_set)} training images; lower train.batch_size or ray.num_workers")
    schedule = Schedule.from_config(cfg.train, steps_per_epoch)
    scheduler = ScheduledLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type) if settings.amp and settings.amp_dtype != torch.bfloat16 else None
    store = getattr(session, "best_store", None) or BestStore()
    state = TrainingState(tm, optimizer, scheduler, scaler, BestModel(schedule.unit), store)

    # Resume from the session's checkpoint, if it has one: the same iteration, batches and RNG states.
    checkpoint = session.load_checkpoint()
    done = state.load_state_dict(checkpoint) if checkpoint is not None else 0
    model = session.wrap_model(tm)
    batches = TrainBatches(train_loader, sampler, cfg.seed, session.rank,
                           bar_total=schedule.length if schedule.unit == EPOCH else None)
    batches.seek(done)
    if checkpoint is not None and checkpoint.get("rng"):
        set_rng_states(checkpoint["rng"][min(session.rank, len(checkpoint["rng"]) - 1)])
    log = getattr(session, "log", None)

    def on_log(entry: dict[str, Any]) -> None:
        if session.rank == 0:
            _print_iteration(schedule, entry)
        if log is not None:
            log(entry)

    meter = IterationMeter()
    evaluated = sum(1 for p in schedule.points("evaluate") if p * schedule.unit_iters <= done)
    last: dict[str, Any] = {}
    while done < schedule.iters:
        stop = schedule.next_report(done)
        step = schedule.step_of(stop)
        metrics: dict[str, Any] = {schedule.unit: step}
        metrics.update(train_steps(model, objective, batches, done, stop, optimizer, scheduler, settings, schedule,
                                   scaler, meter, on_log if cfg.train.log_interval else None))
        done = stop
        is_last = done == schedule.iters
        inference = tm.export()  # the network, plus C2F's stages where they make the prediction
        if schedule.evaluates(done):
            val = evaluate(inference, val_loader, _metrics_for(info), settings)
            metrics.update({f"{keys.VAL_PREFIX}{k}": v for k, v in val.items()})
            state.best.update(step, val, inference)
            evaluated += 1
        if is_last:
            metrics.update(evaluate_best_on_domains(cfg, session, state.best, inference, settings))
        writes = schedule.checkpoints(done)
        rng = gather_rng_states(session.world_size) if writes else []
        ckpt_dir = None
        if _wants_visuals(cfg, schedule, done, evaluated) and log is not None:
            # every rank logs (a collective report under Ray Train); rank 0 alone draws
            panels = _png_bytes(_visuals(tm, objective, val_loader, settings)) if session.rank == 0 else {}
            log({schedule.unit: step, keys.VISUALS: panels})
        if session.rank == 0:  # rank 0 alone prints and writes the checkpoint
            _print_progress(schedule, done, metrics)
            if writes:
                ckpt_dir = _save_checkpoint(cfg, done, state, inference, rng, schedule, final=is_last)
        try:
            session.report(metrics, ckpt_dir)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
        last = metrics
    return last

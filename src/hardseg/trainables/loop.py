"""The per-worker training and evaluation loop.

Read it like torchvision's ``references/segmentation/train.py``: the building
blocks first, the story last. :func:`fit` resolves the :class:`StepSettings`
once (device, AMP, channels_last, evaluation mode, DDP size), builds data,
model, objective and optimiser, resumes the :class:`TrainingState` from a
checkpoint if the session has one, then alternates :func:`train_one_epoch` and
:func:`evaluate` and reports once per epoch, with a checkpoint folder on rank 0.
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
weights. The exported model of each checkpoint (``model_export.pt``, MLflow's
``model/model_export.pt``) is the best one so far. At the last epoch the best
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
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
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
                   world_size=world_size, epochs=cfg.train.epochs)

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
    """Poly LR (1 − t/T)^power after a linear warm-up, as in DeepLab."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power
    return f


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
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        elif isinstance(self.sampler, RandomSampler) and self.sampler.generator is not None:
            self.sampler.generator.manual_seed(seed_for(self.seed, epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self.sampler)

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


def eval_batch_size(cfg: RunConfig) -> int:
    return cfg.eval.batch_size or cfg.train.batch_size


def build_eval_loader(cfg: RunConfig, ds: Dataset, rank: int, world_size: int, device: torch.device,
                      persistent: bool = False) -> DataLoader:
    """``eval.batch_size`` batches of ``ds``, each rank its own shard."""
    return DataLoader(ds, batch_size=eval_batch_size(cfg), sampler=ShardSampler(len(ds), rank, world_size),
                      **_loader_options(cfg, device, persistent))


# -- model, best epoch and checkpointed state ------------------------------------------
class BestModel:
    """The best epoch so far by ``val/<BEST_METRIC>`` and a CPU copy of its inference weights.

    ``epoch`` is 1-based (0: nothing evaluated yet); ``val`` holds that epoch's
    validation metrics. A tie keeps the earlier epoch; a NaN score never wins.
    """

    def __init__(self) -> None:
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

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "val": self.val, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.epoch, self.val, self.weights = state["epoch"], dict(state["val"]), state["weights"]

    def metrics(self) -> dict[str, float]:
        """``best/epoch`` and ``best/val/<metric>``."""
        return {f"{keys.BEST_PREFIX}epoch": self.epoch,
                **{f"{keys.BEST_PREFIX}{keys.VAL_PREFIX}{k}": v for k, v in self.val.items()}}


@dataclass
class TrainingState:
    """What a checkpoint saves and a resumed run restores (``checkpoint.pt``)."""

    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    best: BestModel

    def state_dict(self, epoch: int, cfg: RunConfig) -> dict[str, Any]:
        """The state after ``epoch`` (0-based), with the run's config."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "epoch": epoch,
                "best": self.best.state_dict(), "config": cfg.model_dump(mode="json")}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint's state; returns the (0-based) epoch to go on with."""
        self.best.load_state_dict(state.get("best"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return state["epoch"] + 1


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


def train_one_epoch(model: nn.Module, objective: Objective, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, epoch: int, settings: StepSettings,
                    scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass over the training shard (0-based ``epoch``); returns mean loss terms and throughput.

    Nothing is read back to the host per step: loss terms are summed on the
    device and read at the end. A non-finite loss, or (without a GradScaler,
    which skips such steps itself) a non-finite gradient norm, is recorded on
    the device with its 1-based step; the flag is read every
    ``settings.finite_check_every`` steps, before the optimiser step, and at the
    end of the epoch.

    Raises :class:`~hardseg.errors.NonFiniteLoss` naming the epoch and the step
    where it first happened. DDP ranks agree on that step (the flag is reduced
    over ranks), so every rank stops at the same check.
    """
    model.train()
    device, world_size, epochs = settings.device, settings.world_size, settings.epochs
    check_every = settings.finite_check_every
    sums: dict[str, Tensor] = {}
    bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: every step finite so far
    bad_values = torch.zeros(2, device=device)  # loss and gradient norm at bad_step
    n_images, step_times = 0, []
    steps = len(loader)
    amp = autocast_for(device, settings.amp, settings.amp_dtype)
    start = time.perf_counter()
    first_step_unix = time.time()
    for step, (images, target) in enumerate(epoch_bar(loader, epoch, epochs)):
        t0 = time.perf_counter()
        images = images.to(device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with amp:
            out = SegOutput.from_dict(model(images))
            terms = objective.losses(out, target, progress=(epoch + step / steps) / epochs)
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
        bad_step = torch.where(first, step + 1, bad_step)
        bad_values = torch.where(first, values, bad_values)
        if (step + 1) % check_every == 0 or step + 1 == steps:
            _raise_if_not_finite(bad_step, bad_values, epoch, world_size)
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
        step_times.append(time.perf_counter() - t0)
    means = _mean_over_ranks(sums, world_size, device)  # the epoch's one host read
    elapsed = time.perf_counter() - start
    train = keys.TRAIN_PREFIX
    stats = {f"{train}{k}": v / max(1, steps) for k, v in means.items()}
    stats[f"{train}images_per_s"] = n_images * world_size / elapsed
    stats[f"{train}step_time_s"] = float(np.median(step_times)) if step_times else float("nan")
    stats[f"{train}epoch_time_s"] = elapsed
    stats[f"{train}first_step_unix"] = first_step_unix
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


def _raise_if_not_finite(bad_step: Tensor, bad_values: Tensor, epoch: int, world_size: int) -> None:
    """Read the device-side flag (one host sync); every rank raises at the first bad step of any rank."""
    step = bad_step
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        never = torch.iinfo(torch.int64).max
        step = torch.where(bad_step > 0, bad_step, never)
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
        step = torch.where(step == never, 0, step)
    s = int(step.item())
    if s == 0:
        return
    if int(bad_step.item()) == s:
        loss, norm = bad_values.tolist()
        raise NonFiniteLoss(f"non-finite loss: loss became {loss} (gradient norm {norm}) at epoch {epoch + 1}, "
                            f"step {s}", epoch + 1)
    raise NonFiniteLoss(f"non-finite loss: loss or gradients stopped being finite on another rank at epoch "
                        f"{epoch + 1}, step {s}", epoch + 1)


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


def _save_checkpoint(cfg: RunConfig, epoch: int, state: TrainingState, export: nn.Module,
                     visuals: dict[str, np.ndarray]) -> Path:
    """A new folder with ``checkpoint.pt`` (the training state after ``epoch``, to resume),
    ``model_export.pt`` (the best model so far; ``export``, this epoch's inference model, until
    an epoch has been evaluated) and the visuals as PNGs."""
    d = Path(tempfile.mkdtemp(prefix="hardseg-ckpt-"))
    torch.save(state.state_dict(epoch, cfg), d / CHECKPOINT_FILE)
    best = state.best
    weights = best.weights if best.weights is not None else export.state_dict()
    torch.save({"model": weights, "epoch": best.epoch or epoch + 1, "config": cfg.model_dump(mode="json"),
                "num_parameters": sum(p.numel() for p in export.parameters())}, d / EXPORT_FILE)
    if visuals:
        (d / "visuals").mkdir()
        for name, img in visuals.items():
            Image.fromarray(np.asarray(img, dtype=np.uint8)).save(d / "visuals" / f"{name.replace('/', '_')}.png")
    return d


def _print_progress(epoch: int, epochs: int, m: dict[str, Any]) -> None:
    miou = m.get("val/miou")
    parts = [f"epoch {epoch + 1}/{epochs}", f"loss {m.get('train/loss', float('nan')):.4f}"]
    if miou is not None:
        parts.append(f"val mIoU {miou:.4f}")
    parts += [f"{m.get('train/images_per_s', 0):.0f} img/s", f"{m.get('train/epoch_time_s', 0):.1f}s"]
    print("[hardseg] " + " | ".join(parts), flush=True)


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

    # Data: each sample's augmentation is seeded from (seed, epoch, index), see SeededSamples.
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

    # Optimiser, poly LR schedule per step, AMP's gradient scaler.
    optimizer = build_optimizer(cfg, tm, fused=device.type == "cuda")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than a worker's share of the "
                         f"{len(train_set)} training images; lower train.batch_size or ray.num_workers")
    total = cfg.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(total, cfg.train.poly_power, int(cfg.train.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler(device.type) if settings.amp and settings.amp_dtype != torch.bfloat16 else None
    state = TrainingState(tm, optimizer, scheduler, scaler, BestModel())

    # Resume from the session's checkpoint, if it has one.
    checkpoint = session.load_checkpoint()
    start_epoch = state.load_state_dict(checkpoint) if checkpoint is not None else 0
    model = session.wrap_model(tm)

    last: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        torch.manual_seed(seed_for(cfg.seed, epoch, session.rank))
        sampler.set_epoch(epoch)
        metrics: dict[str, Any] = {"epoch": epoch + 1}
        metrics.update(train_one_epoch(model, objective, train_loader, optimizer, scheduler, epoch, settings, scaler))
        is_last = epoch + 1 == cfg.train.epochs
        inference = tm.export()  # the network, plus C2F's stages where they make the prediction
        if is_last or (epoch + 1) % cfg.train.eval_every == 0:
            val = evaluate(inference, val_loader, _metrics_for(info), settings)
            metrics.update({f"{keys.VAL_PREFIX}{k}": v for k, v in val.items()})
            state.best.update(epoch + 1, val, inference)
        if is_last:
            metrics.update(evaluate_best_on_domains(cfg, session, state.best, inference, settings))
        ckpt_dir = None
        if session.rank == 0:  # rank 0 alone prints, draws the visuals and writes the checkpoint
            _print_progress(epoch, cfg.train.epochs, metrics)
            every = cfg.train.log_images_every
            visuals = _visuals(tm, objective, val_loader, settings) \
                if every and ((epoch + 1) % every == 0 or is_last) else {}
            ckpt_dir = _save_checkpoint(cfg, epoch, state, inference, visuals)
        try:
            session.report(metrics, ckpt_dir)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
        last = metrics
    return last

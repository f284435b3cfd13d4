"""The per-worker training and evaluation loop.

Read it top to bottom, like torchvision's ``references/segmentation/train.py``:
:func:`fit` builds data, model, objective and optimiser, resumes from a
checkpoint if the session has one, then alternates :func:`train_one_epoch` and
:func:`evaluate` and reports once per epoch. It knows nothing of Ray or MLflow:
a :class:`Session` supplies the rank, device, DDP wrapping, checkpoint and
report hooks (``ray_worker.RaySession`` under Ray Train,
``local.LocalSession`` in a plain process).

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
  ``<family>-<s>/miou`` / ``best/val/miou`` (:mod:`hardseg.trainables.robustness`).

``val/<metric>`` stays the current epoch's model at every epoch.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from hardseg.config import RunConfig
from hardseg.data import build_dataset, class_pixel_frequencies, dataset_info
from hardseg.data.domains import build_domain, parse_domains
from hardseg.models import SegOutput, build_model, predict_classes
from hardseg.strategies import Objective, StrategyContext, TrainingModel
from hardseg.trainables.metrics import SegMetrics
from hardseg.trainables.robustness import robustness

CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_FILE = "model_export.pt"
BEST_METRIC = "miou"  # the validation metric that picks the best epoch


class Session(Protocol):
    """What the loop needs from its runtime (Ray Train or a plain process)."""

    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...
    def load_checkpoint(self) -> dict[str, Any] | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


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


def poly_lambda(total_steps: int, power: float, warmup_steps: int = 0):
    """Poly LR (1 − t/T)^power after a linear warm-up, as in DeepLab."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - step / max(1, total_steps)) ** power
    return f


def build_optimizer(cfg: RunConfig, model: TrainingModel) -> torch.optim.Optimizer:
    """SGD or AdamW over ``model.param_groups()``: the network, then each strategy's modules as
    their own group at ``train.lr`` × the group's ``lr_mult`` (``strategy_params.hl.lr_mult``)."""
    t = cfg.train
    groups = [{**g, "lr": t.lr * g["lr_mult"]} for g in model.param_groups()]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from (seed, epoch, rank, ...), stable across runs."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


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
        return {"best/epoch": self.epoch, **{f"best/val/{k}": v for k, v in self.val.items()}}


def build_training_model(cfg: RunConfig, info, class_frequencies: np.ndarray | None, meta: bool = False
                         ) -> tuple[TrainingModel, Objective]:
    """The network of ``cfg.model`` with the strategies' modules, for a dataset described by ``info``.

    ``meta``: build the network and the modules on PyTorch's meta device (no
    memory, no init cost), which is all :func:`check_strategies_fit` needs.

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
                          norm=cfg.model.norm)
        return TrainingModel(net, objective), objective


def check_strategies_fit(cfg: RunConfig) -> None:
    """Build the training model on the meta device so that model- and dataset-dependent strategy
    settings fail on the driver, before anything is logged; ConfigError names the key."""
    info = dataset_info(cfg.data)
    build_training_model(cfg, info, np.ones(info.num_classes), meta=True)


def train_one_epoch(model: nn.Module, objective: Objective, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler | None, device: torch.device, epoch: int, epochs: int,
                    channels_last: bool, world_size: int) -> dict[str, float]:
    """One pass over the training shard; returns mean loss terms and throughput.

    Raises ``FloatingPointError`` when the loss or the (DDP-averaged)
    gradients stop being finite; every rank sees the same averaged
    gradients, so every rank stops at the same step.
    """
    model.train()
    sums: dict[str, float] = {}
    n_images, step_times = 0, []
    steps = len(loader)
    amp = torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16) \
        if scaler is not None else nullcontext()
    start = time.perf_counter()
    first_step_unix = time.time()
    for step, (images, target) in enumerate(loader):
        t0 = time.perf_counter()
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with amp:
            out = SegOutput.from_dict(model(images))
            terms = objective.losses(out, target, progress=(epoch + step / steps) / epochs)
        loss = terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norm.item())):
            raise FloatingPointError(f"loss became {loss.item()} (gradient norm {grad_norm.item()}) at epoch {epoch + 1}, step {step + 1}")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        n_images += images.shape[0]
        step_times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    sums = _mean_over_ranks(sums, world_size)
    stats = {f"train/{k}": v / max(1, steps) for k, v in sums.items()}
    stats["train/images_per_s"] = n_images * world_size / elapsed
    stats["train/step_time_s"] = float(np.median(step_times)) if step_times else float("nan")
    stats["train/epoch_time_s"] = elapsed
    stats["train/first_step_unix"] = first_step_unix
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


def _mean_over_ranks(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Average per-rank epoch sums over DDP ranks, so reported losses are global."""
    if world_size == 1 or not values or not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size for k, v in zip(keys, t)}


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader, device: torch.device, metrics: SegMetrics,
             channels_last: bool = False) -> dict[str, float]:
    """Confusion-matrix metrics over a (sharded) split, summed over ranks."""
    net.eval()
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = net(images)
        logits = out.logits if isinstance(out, SegOutput) else out
        metrics.update(target, predict_classes(logits))
    metrics.reduce_from_all_processes()
    return metrics.compute()


def _metrics_for(info) -> SegMetrics:
    return SegMetrics(info.num_classes, info.class_names, info.large_classes, info.small_classes,
                      info.thin_classes, ignore_index=info.ignore_index)


def _sharded_loader(cfg: RunConfig, ds: Dataset, session: Session) -> DataLoader:
    """Evaluation batches of ``ds``, each rank its own shard."""
    return DataLoader(ds, batch_size=max(cfg.train.batch_size, 32),
                      sampler=ShardSampler(len(ds), session.rank, session.world_size))


def evaluate_on_domains(model: nn.Module, cfg: RunConfig, specs: list[str], device: torch.device,
                        loader_for: Callable[[Dataset], DataLoader], channels_last: bool = False) -> dict[str, float]:
    """``{"<domain name>/<metric>": value}`` for every domain spec (:mod:`hardseg.data.domains`; bad specs or
    data raise DataError); ``loader_for`` batches a domain's dataset."""
    out: dict[str, float] = {}
    for domain in parse_domains(specs):
        ds = build_domain(cfg.data, domain)
        res = evaluate(model, loader_for(ds), device, _metrics_for(ds.info), channels_last)
        out.update({f"{domain.name}/{k}": v for k, v in res.items()})
    return out


def evaluate_best_on_domains(cfg: RunConfig, session: Session, best: BestModel, inference: nn.Module,
                             channels_last: bool) -> dict[str, float]:
    """The best model on every ``cfg.data.eval_domains`` entry, plus ``best/...`` and robustness (module docstring)."""
    domains = evaluate_on_domains(best.model(inference), cfg, cfg.data.eval_domains, session.device,
                                  lambda ds: _sharded_loader(cfg, ds, session), channels_last)
    out: dict[str, float] = best.metrics()
    out.update(domains)
    out.update(robustness(domains, BEST_METRIC, clean=best.score))
    return out


def _visual_batch(loader: DataLoader, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    images, target = next(iter(loader))
    return images[:n], target[:n]


def fit(cfg: RunConfig, session: Session) -> dict[str, Any]:
    """Train ``cfg`` on this worker; returns the last reported metrics."""
    device = session.device
    torch.set_num_threads(cfg.train.num_threads or max(1, int(cfg.ray.cpus_per_worker)))
    use_amp = resolve_flag(cfg.train.amp, device)
    channels_last = resolve_flag(cfg.train.channels_last, device)

    # Data. The augmentation stream is reseeded per (seed, epoch, rank) below.
    train_set = build_dataset(cfg.data, "train", train=True)
    info = train_set.info
    if cfg.train.shuffle:
        sampler: Sampler = DistributedSampler(train_set, session.world_size, session.rank, shuffle=True,
                                              seed=cfg.seed, drop_last=True) if session.world_size > 1 \
            else RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed))
    else:
        sampler = DistributedSampler(train_set, session.world_size, session.rank, shuffle=False, drop_last=True) \
            if session.world_size > 1 else SequentialSampler(train_set)
    train_loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True)
    val_loader = _sharded_loader(cfg, build_dataset(cfg.data, "val", train=False), session)

    # Model and objective: the same seed on every rank gives the same init.
    torch.manual_seed(cfg.seed)
    tm, objective = build_training_model(cfg, info, class_pixel_frequencies(train_set))
    tm = tm.to(device)
    if channels_last:
        tm = tm.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, tm)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than a worker's share of the "
                         f"{len(train_set)} training images; lower train.batch_size or ray.num_workers")
    total = cfg.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(total, cfg.train.poly_power, int(cfg.train.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler(device.type) if use_amp else None

    start_epoch, resumed = 0, False
    best = BestModel()
    state = session.load_checkpoint()
    if state is not None:
        best.load_state_dict(state.get("best"))
        tm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, resumed = state["epoch"] + 1, True
    model = session.wrap_model(tm)

    last: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        _maybe_inject_fault(cfg, session, epoch, resumed)
        torch.manual_seed(seed_for(cfg.seed, epoch, session.rank))
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        elif isinstance(sampler, RandomSampler):
            sampler.generator.manual_seed(seed_for(cfg.seed, epoch))
        try:
            metrics: dict[str, Any] = {"epoch": epoch + 1}
            metrics.update(train_one_epoch(model, objective, train_loader, optimizer, scheduler, scaler, device,
                                           epoch, cfg.train.epochs, channels_last, session.world_size))
        except FloatingPointError as err:
            # Every rank stops here; report instead of raising so Ray does not retry a
            # deterministic failure from the last checkpoint.
            last = {"epoch": epoch + 1, "error": f"non-finite loss: {err}"}
            session.report(last, None)
            return last
        is_last = epoch + 1 == cfg.train.epochs
        inference = tm.export()  # the network, plus C2F's stages where they make the prediction
        if is_last or (epoch + 1) % cfg.train.eval_every == 0:
            val = evaluate(inference, val_loader, device, _metrics_for(info), channels_last)
            metrics.update({f"val/{k}": v for k, v in val.items()})
            best.update(epoch + 1, val, inference)
        if is_last:
            metrics.update(evaluate_best_on_domains(cfg, session, best, inference, channels_last))
        visuals = {}
        every = cfg.train.log_images_every
        if session.rank == 0 and every and ((epoch + 1) % every == 0 or is_last):
            visuals = _visuals(tm, objective, val_loader, device, channels_last)
        if session.rank == 0:
            _print_progress(epoch, cfg.train.epochs, metrics)
        ckpt_dir = _save_checkpoint(tm, optimizer, scheduler, scaler, epoch, cfg, visuals, best) \
            if session.rank == 0 else None
        try:
            session.report(metrics, ckpt_dir)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
        last = metrics
    return last


@torch.no_grad()
def _visuals(tm: TrainingModel, objective: Objective, loader: DataLoader, device: torch.device,
             channels_last: bool) -> dict[str, np.ndarray]:
    images, target = _visual_batch(loader)
    images, target = images.to(device), target.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    was_training = tm.training
    tm.eval()
    try:
        out = SegOutput.from_dict(tm(images))
        return objective.visuals(out, images, target)
    finally:
        tm.train(was_training)


def _save_checkpoint(tm: TrainingModel, optimizer, scheduler, scaler, epoch: int, cfg: RunConfig,
                     visuals: dict[str, np.ndarray], best: BestModel) -> Path:
    """``checkpoint.pt`` (the training state, to resume) and ``model_export.pt`` (the best model so far)."""
    d = Path(tempfile.mkdtemp(prefix="hardseg-ckpt-"))
    torch.save({"model": tm.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
                "best": best.state_dict(), "config": cfg.model_dump(mode="json")}, d / CHECKPOINT_FILE)
    export = tm.export()
    weights = best.weights if best.weights is not None else export.state_dict()
    torch.save({"model": weights, "epoch": best.epoch or epoch + 1, "config": cfg.model_dump(mode="json"),
                "num_parameters": sum(p.numel() for p in export.parameters())}, d / EXPORT_FILE)
    if visuals:
        from PIL import Image

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


def _maybe_inject_fault(cfg: RunConfig, session: Session, epoch: int, resumed: bool) -> None:
    """Test aid: a configured rank kills its own process (SIGKILL) once."""
    f = cfg.fault
    if f.kill_rank is not None and f.kill_rank == session.rank and f.kill_at_epoch == epoch + 1 and not resumed:
        import os
        import signal

        print(f"[hardseg] fault injection: rank {session.rank} kills itself at epoch {epoch + 1}", flush=True)
        # Ray Train's controller collects reports on its 2 s health-check poll; give it
        # time to register the previous epoch's checkpoint before dying.
        time.sleep(5.0)
        os.kill(os.getpid(), signal.SIGKILL)

"""The per-worker training loop: :func:`fit` and the steps it runs.

Read it like torchvision's ``references/segmentation/train.py``: the pieces first, the story last.
:func:`fit` resolves the :class:`~hardseg.trainables.settings.StepSettings` once, builds data
(:mod:`~hardseg.trainables.loaders`), model and objective (:mod:`hardseg.strategies.build`),
optimiser and the run's :class:`~hardseg.trainables.schedule.Schedule`
(:mod:`~hardseg.trainables.optim`), resumes from the session's checkpoint if it has one
(:mod:`~hardseg.trainables.checkpoints`), then alternates :func:`train_steps` and evaluation
(:mod:`~hardseg.trainables.evaluation`, the best model: :mod:`~hardseg.trainables.best`), reporting
every epoch (epoch schedules) or at every evaluation or checkpoint (iteration schedules).

It knows nothing of Ray or MLflow: a :class:`Session` supplies the rank, device, DDP wrapping,
checkpoint and report hooks (``ray_worker.RaySession`` under Ray Train, ``local.LocalSession`` in a
plain process, ``platform.tune_session.TuneSession`` in a one-worker sweep trial; a test's session
may inject faults).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from hardseg import keys
from hardseg.config import HardsegConfig
from hardseg.data import build_dataset, class_pixel_frequencies
from hardseg.errors import NonFiniteLoss
from hardseg.models import SegOutput
from hardseg.strategies import Objective
from hardseg.strategies.build import build_training_model
from hardseg.trainables.best import BestModel, BestStore
from hardseg.trainables.checkpoints import TrainingState, gather_rng_states, save_checkpoint, set_rng_states
from hardseg.trainables.evaluation import evaluate, evaluate_best_model, metrics_for
from hardseg.trainables.loaders import TrainBatches, build_eval_loader, build_train_loader
from hardseg.trainables.optim import ScheduledLR, build_optimizer
from hardseg.trainables.progress import epoch_bar, print_iteration, print_report
from hardseg.trainables.schedule import EPOCH, ITERATION, Schedule
from hardseg.trainables.settings import StepSettings, autocast_for, configure_backends
from hardseg.trainables.visuals import visual_panels, wants_visuals


class Session(Protocol):
    """What the loop needs from its runtime (Ray Train or a plain process)."""

    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...
    def load_checkpoint(self) -> dict[str, Any] | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...
    # ``checkpoint_dir`` is a new folder per report that the loop deletes after the call: a session keeps it by
    # copying or moving it
    # Optional: ``log(metrics)`` for the per-iteration logs and the visuals (every rank calls it at the same
    # iterations; without it they are dropped), and ``best_store`` (a :class:`~hardseg.trainables.best.BestStore`,
    # where the best model is kept once; without it, in memory).


def convert_sync_bn(model: nn.Module, enabled: bool, device: torch.device, world_size: int) -> nn.Module:
    """``model.sync_bn``: BatchNorm → SyncBatchNorm for DDP on several GPUs.

    A no-op on CPU (gloo; PyTorch's SyncBatchNorm needs a GPU) and with one
    worker, where plain BatchNorm already sees the whole batch.
    """
    if not enabled or world_size < 2 or device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


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
    ``settings.finite_check_every`` steps (:data:`~hardseg.trainables.settings.FINITE_CHECK_EVERY` on
    CUDA, every step on CPU, where checking is free), before the optimiser step, and at the end. Every
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


def fit(cfg: HardsegConfig, session: Session) -> dict[str, Any]:
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
            print_iteration(schedule, entry)
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
            val = evaluate(inference, val_loader, metrics_for(info), settings)
            metrics.update({f"{keys.VAL_PREFIX}{k}": v for k, v in val.items()})
            state.best.update(step, val, inference)
            evaluated += 1
        if is_last:
            metrics.update(evaluate_best_model(cfg, state.best, inference, settings, session.rank, session.world_size))
        writes = schedule.checkpoints(done)
        rng = gather_rng_states(session.world_size) if writes else []
        ckpt_dir = None
        if wants_visuals(cfg, schedule, done, evaluated) and log is not None:
            # every rank logs (a collective report under Ray Train); rank 0 alone draws
            panels = visual_panels(tm, objective, val_loader, settings) if session.rank == 0 else {}
            log({schedule.unit: step, keys.VISUALS: panels})
        if session.rank == 0:  # rank 0 alone prints and writes the checkpoint
            print_report(schedule, done, metrics)
            if writes:
                ckpt_dir = save_checkpoint(cfg, done, state, inference, rng, schedule, final=is_last)
        try:
            session.report(metrics, ckpt_dir)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
        last = metrics
    return last

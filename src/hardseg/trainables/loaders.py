"""The input pipeline: the training batches of each rank as one deterministic sequence, and the
evaluation batches of each rank's shard.

``data.loader_workers`` persistent worker processes decode and augment (``pin_memory`` and
``non_blocking`` copies on CUDA). Every training sample's augmentation is seeded from
``(seed, epoch, index)`` (:class:`SeededSamples`), so a seed reproduces every metric exactly
whatever the number of loader workers; :class:`TrainBatches` puts a resumed run back on the same
batches.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from hardseg.config import HardsegConfig
from hardseg.trainables.progress import epoch_bar


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from (seed, epoch, rank, ...), stable across runs."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def loader_workers(cfg: HardsegConfig) -> int:
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


def _loader_options(cfg: HardsegConfig, device: torch.device, persistent: bool) -> dict[str, Any]:
    workers = loader_workers(cfg)
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        opts.update(prefetch_factor=cfg.data.prefetch_factor, persistent_workers=persistent)
    return opts


def build_train_loader(cfg: HardsegConfig, train_set: Dataset, rank: int, world_size: int,
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


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: no padding, so the shards'
    confusion matrices add up to exactly the whole split's."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_batch_size(cfg: HardsegConfig) -> int:
    return cfg.eval.batch_size or cfg.train.batch_size


def build_eval_loader(cfg: HardsegConfig, ds: Dataset, rank: int, world_size: int, device: torch.device,
                      persistent: bool = False) -> DataLoader:
    """``eval.batch_size`` batches of ``ds``, each rank its own shard."""
    return DataLoader(ds, batch_size=eval_batch_size(cfg), sampler=ShardSampler(len(ds), rank, world_size),
                      **_loader_options(cfg, device, persistent))

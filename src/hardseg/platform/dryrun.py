"""``--dry-run`` of ``hardseg train``, ``sweep`` and ``ablate``: the resolved config and trials, nothing started.

A dry run prepares as the real command does (:func:`hardseg.platform.prepare.prepare_run` and
:func:`~hardseg.platform.prepare.prepare_sweep`, with ``dry_run=True``: the same checks, so it accepts exactly
what the real command accepts, bar what needs the machine the run will have), prints the resolved run config
as YAML and, for sweeps and ablations, the trials (an ablation's grid cell by cell, named as their MLflow runs
will be; a search's parameters and budget), then exits 0. It starts no Ray, creates no MLflow run or store,
and generates no data.
"""

from __future__ import annotations

import itertools
import json

import yaml

from hardseg.data import build_source
from hardseg.platform.names import trial_run_name
from hardseg.platform.prepare import prepare_run, prepare_sweep
from hardseg.trainables.schedule import Schedule, length_of, unit_of


def dry_run_train(cfg) -> int:
    """Print the resolved config of one ``hardseg train`` run."""
    prepared = prepare_run(cfg, dry_run=True)
    cfg = prepared.cfg
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    per_epoch = iters_per_epoch(cfg)
    if per_epoch is not None or cfg.train.iters is not None:
        for line in Schedule.from_config(cfg.train, per_epoch or 1).summary(per_epoch is not None).splitlines():
            print(f"[hardseg] {line}")
    if cfg.ray.use_gpu:
        print(f"[hardseg] expects {cfg.ray.num_workers * cfg.ray.gpus_per_worker:g} GPU(s): ray.num_workers="
              f"{cfg.ray.num_workers} x ray.gpus_per_worker={cfg.ray.gpus_per_worker:g}, "
              f"{cfg.ray.num_workers * cfg.train.batch_size} images per iteration")
    for line in prepared.warning_lines():
        print(line)
    print(f"[hardseg] dry run: config valid ({'+'.join(cfg.strategies)} on {cfg.model.name}, "
          f"{length_of(cfg.train)} {unit_of(cfg.train)}s, {cfg.ray.num_workers} worker(s)); nothing started", flush=True)
    return 0


def iters_per_epoch(cfg) -> int | None:
    """Batches per pass of each worker (its shard, whole batches), from the synthetic set's size or the
    training split's files; None when the split cannot be read here."""
    if cfg.data.dataset == "synthetic":
        n = cfg.data.synthetic.n_train
    else:
        try:
            n = len(build_source(cfg.data, "train"))
        except Exception:  # not on this machine: the schedule is printed in iterations only
            return None
    return (n // cfg.ray.num_workers) // cfg.train.batch_size


def dry_run_sweep(space, config_path: str | None, overrides: list[str], grid: dict[str, list] | None = None,
                  name: str | None = None) -> int:
    """Print the base config and the trials of a sweep (``grid`` None) or an ablation grid."""
    prepared = prepare_sweep(space, config_path, overrides, name=name, grid=grid, dry_run=True)
    base = prepared.base
    print("# base run config of every trial")
    print(yaml.safe_dump(base.model_dump(mode="json"), sort_keys=False).rstrip())
    for line in prepared.warning_lines:
        print(line)
    if grid is not None:
        cells = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        print(f"# {len(cells)} trials (the grid {' × '.join(grid)}), as their MLflow runs will be named:")
        for i, cell in enumerate(cells):
            print(f"  {i:>3}  {trial_run_name(cell)}")
    else:
        s = space.sweep
        target = ", ".join(f"{m} ({mode})" for m, mode in zip(s.metrics, s.modes))
        print(f"# {s.num_samples} trials sampled by Optuna TPE (seed {s.seed}) for {target}"
              + (f", ASHA grace {s.scheduler.grace_period}, factor {s.scheduler.reduction_factor}" if s.scheduler
                 else "") + "; parameters:")
        for path, param in space.params.items():
            print(f"  {path}: {json.dumps(param.to_dict())}")
    print("[hardseg] dry run: space and config valid; nothing started", flush=True)
    return 0

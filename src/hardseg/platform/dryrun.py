"""``--dry-run`` of ``hardseg train``, ``sweep`` and ``ablate``: the resolved config and trials, nothing started.

A dry run validates what the real command validates before Ray starts (the config,
the space, ``--set`` against searched keys, every strategy choice built on PyTorch's
meta device), prints the resolved run config as YAML and, for sweeps and ablations,
the trials (an ablation's grid cell by cell, named as their MLflow runs will be; a
search's parameters and budget), then exits 0. It starts no Ray, creates no MLflow
run or store, and generates no data.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from hardseg.data import build_dataset
from hardseg.config import load_config
from hardseg.data.domains import parse_domains
from hardseg.errors import ConfigError
from hardseg.platform.names import check_name, trial_run_name
from hardseg.platform.prepare import resolve_paths
from hardseg.platform.runs import warning_lines
from hardseg.platform.tracking import check_tracking_uri
from hardseg.strategies.build import check_strategies_fit
from hardseg.trainables.schedule import Schedule, length_of, unit_of


def dry_run_train(cfg) -> int:
    """Print the resolved config of one ``hardseg train`` run."""
    cfg = resolve_paths(cfg)
    if cfg.tracking.uri:
        check_tracking_uri(cfg.tracking.uri)
    parse_domains(cfg.data.eval_domains)  # the specs' syntax and local requirements (frost photographs)
    check_strategies_fit(cfg)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    per_epoch = iters_per_epoch(cfg)
    if per_epoch is not None or cfg.train.iters is not None:
        for line in Schedule.from_config(cfg.train, per_epoch or 1).summary(per_epoch is not None).splitlines():
            print(f"[hardseg] {line}")
    if cfg.ray.use_gpu:
        print(f"[hardseg] expects {cfg.ray.num_workers * cfg.ray.gpus_per_worker:g} GPU(s): ray.num_workers="
              f"{cfg.ray.num_workers} x ray.gpus_per_worker={cfg.ray.gpus_per_worker:g}, "
              f"{cfg.ray.num_workers * cfg.train.batch_size} images per iteration")
    for line in warning_lines([cfg]):
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
            n = len(build_dataset(cfg.data, "train", train=False))
        except Exception:  # not on this machine: the schedule is printed in iterations only
            return None
    return (n // cfg.ray.num_workers) // cfg.train.batch_size


def sweep_warning_lines(space, config_path: str | None, overrides: list[str]) -> list[str]:
    """The distinct warning lines (:func:`hardseg.platform.runs.warning_lines`) of the trials a sweep or
    an ablation can have: one config per strategy option, its searched ``strategy_params`` at their
    first boundary value (a searched λ under AdamW is set in every trial that has it)."""
    options = space.strategy_options(load_config(config_path).model_dump(mode="json"))
    cfgs = []
    for option in options:
        sampled = {"strategies": "+".join(option)} if "strategies" in space.params else {}
        sampled |= {p.path: p.boundary_values()[0] for p in space.params.values()
                    if p.path.startswith("strategy_params.") and set(p.when) <= set(option)}
        cfgs.append(space.run_config(sampled, config_path, overrides))
    return warning_lines(cfgs)


def dry_run_sweep(space, config_path: str | None, overrides: list[str], grid: dict[str, list] | None = None,
                  name: str | None = None) -> int:
    """Print the base config and the trials of a sweep (``grid`` None) or an ablation grid."""
    if name:
        check_name(name)
    space.validate(config_path)
    config_path = str(Path(config_path).resolve()) if config_path else None
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in space.params:
            raise ConfigError(f"--set {key}: '{key}' is a parameter of {space.label}; remove the --set "
                              f"(or the parameter from the space)")
    base = resolve_paths(space.run_config({}, config_path, overrides))
    if base.tracking.uri:
        check_tracking_uri(base.tracking.uri)
    parse_domains(base.data.eval_domains)
    if "strategies" in space.params:
        for choice in space.params["strategies"].choices:
            check_strategies_fit(resolve_paths(space.run_config({"strategies": choice}, config_path, overrides)))
    print("# base run config of every trial")
    print(yaml.safe_dump(base.model_dump(mode="json"), sort_keys=False).rstrip())
    for line in sweep_warning_lines(space, config_path, overrides):
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

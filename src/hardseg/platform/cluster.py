"""Connecting to Ray (a local runtime by default, a cluster by address) and sizing work on it.

CPU accounting on small machines: a ``TorchTrainer`` controller takes 0 CPUs,
each worker ``ray.cpus_per_worker``. A local runtime therefore needs
``num_workers × cpus_per_worker`` CPUs; when the machine has fewer cores
(2 workers × 1 CPU on a 1-core box, or a Tune trial driver plus 2 workers on
2 cores), hardseg declares that many *logical* CPUs instead of deadlocking
while the worker group waits for resources that never come. Tune trial
drivers get their own custom resource ``trial_driver`` (see the sweeps), so
they never compete with workers for CPUs.

What a training worker reserves (:func:`worker_resources`) is decided here, once, for Train's
``ScalingConfig``, a Tune trial's resources and a sweep's concurrency.

The dashboard stays on: Ray Train's placement-group cleaner queries the State
API through it and logs an error every few seconds without it.
"""

from __future__ import annotations

import os

import ray

from hardseg import timeline
from hardseg.config import RayConfig, RunConfig
from hardseg.errors import ConfigError
from hardseg.platform.console import ray_runtime_env

TRIAL_DRIVER_RESOURCE = "trial_driver"

# Ray Train's controller settings; an explicit value in the environment wins. The controller polls
# its workers every 2 s by default, which delays every report, the end of a run and each sweep
# trial; the preemption watcher is one more actor per run, for spot instances hardseg does not
# manage (and it logs a spurious ERROR, Ray issue #53727). Ray Train copies them from the environment
# of the process that calls fit() into the controller's runtime_env (ENV_VARS_TO_PROPAGATE); they are
# also set before ray.init, so every Ray process (Tune trial actors included) starts with them.
CONTROLLER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def ensure_ray(cfg: RayConfig, *, trial_drivers: int = 0) -> dict:
    """Start or join Ray; returns ``ray.cluster_resources()``.

    Args:
        cfg: the run's Ray settings; ``address`` (or ``RAY_ADDRESS``) joins a cluster.
        trial_drivers: custom ``trial_driver`` slots for a local runtime (sweeps).
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    for key, value in CONTROLLER_ENV.items():
        os.environ.setdefault(key, value)
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    timeline.mark("driver: ray.init")
    # every worker process quiets its console first (hardseg.platform.console)
    common = dict(log_to_driver=True, configure_logging=True, logging_level="WARNING", runtime_env=ray_runtime_env())
    if address:
        ray.init(address=address, **common)
    else:
        # Ray starts worker processes at nice 15, so on a small machine every Ray
        # daemon preempts the training workers; run them at normal priority (as
        # Ray's own job manager does for job drivers).
        os.environ.setdefault("RAY_worker_niceness", "0")
        need = cfg.num_workers * cfg.cpus_per_worker
        cpus = max(os.cpu_count() or 1, int(need + 0.999))
        resources = {TRIAL_DRIVER_RESOURCE: trial_drivers} if trial_drivers else None
        ray.init(num_cpus=cpus, resources=resources, **common)
    timeline.mark("driver: ray.init done")
    return ray.cluster_resources()


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    """What one training worker reserves: ``ray.cpus_per_worker`` CPUs and, with ``ray.use_gpu``,
    ``ray.gpus_per_worker`` GPUs (a fraction lets trials share a GPU). The one place for both the
    Tune trial resources, Train's ``ScalingConfig`` and the sweep's concurrency."""
    res = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        res["GPU"] = cfg.ray.gpus_per_worker
    return res


def trial_resources(cfg: RunConfig, in_process: bool) -> dict[str, float]:
    """One-worker trials train in the trial's process; others only drive a TorchTrainer."""
    if in_process and cfg.ray.num_workers == 1:
        return worker_resources(cfg)
    return {TRIAL_DRIVER_RESOURCE: 1}


def concurrency(cfg: RunConfig, resources: dict[str, float], limit: int | None, num_trials: int) -> int:
    """Trials at once: what the cluster's CPUs (and GPUs, ``ray.gpus_per_worker`` each, fractions
    included) fit, capped by the space and the trial count."""
    total = ray.cluster_resources()
    n = None
    for key, per_worker in worker_resources(cfg).items():
        fits = _fits(total.get(key, 1 if key == "CPU" else 0), cfg.ray.num_workers * per_worker)
        n = fits if n is None else min(n, fits)
    if TRIAL_DRIVER_RESOURCE in resources:
        drivers = int(total.get(TRIAL_DRIVER_RESOURCE, 0))
        if drivers < 1:
            raise ConfigError(f"the Ray cluster has no '{TRIAL_DRIVER_RESOURCE}' resource for trial drivers; start "
                              f"its head with --resources='{{\"{TRIAL_DRIVER_RESOURCE}\": 4}}'")
        n = min(n, drivers)
    return max(1, min(n, limit or n, num_trials))


def _fits(available: float, per_trial: float) -> int:
    """Whole trials of ``per_trial`` in ``available`` (a tolerance for 0.1-style fractions)."""
    return int(available / per_trial + 1e-9)


def connect_ray(base_cfg: RunConfig) -> dict:
    """Join the cluster, or start a local Ray with one ``trial_driver`` slot per trial the cores fit."""
    per_trial = max(1, int(base_cfg.ray.num_workers * base_cfg.ray.cpus_per_worker))
    return ensure_ray(base_cfg.ray, trial_drivers=max(1, (os.cpu_count() or 1) // per_trial))

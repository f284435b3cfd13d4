"""Connecting to Ray: a local runtime by default, a cluster by address.

CPU accounting on small machines: a ``TorchTrainer`` controller takes 0 CPUs,
each worker ``ray.cpus_per_worker``. A local runtime therefore needs
``num_workers × cpus_per_worker`` CPUs; when the machine has fewer cores
(2 workers × 1 CPU on a 1-core box, or a Tune trial driver plus 2 workers on
2 cores), hardseg declares that many *logical* CPUs instead of deadlocking
while the worker group waits for resources that never come. Tune trial
drivers get their own custom resource ``trial_driver`` (see the sweeps), so
they never compete with workers for CPUs.

The dashboard stays on: Ray Train's placement-group cleaner queries the State
API through it and logs an error every few seconds without it.
"""

from __future__ import annotations

import os

import ray

from hardseg.config import RayConfig

TRIAL_DRIVER_RESOURCE = "trial_driver"


def ensure_ray(cfg: RayConfig, *, trial_drivers: int = 0) -> dict:
    """Start or join Ray; returns ``ray.cluster_resources()``.

    Args:
        cfg: the run's Ray settings; ``address`` (or ``RAY_ADDRESS``) joins a cluster.
        trial_drivers: custom ``trial_driver`` slots for a local runtime (sweeps).
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    common = dict(log_to_driver=True, configure_logging=True, logging_level="WARNING")
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
    return ray.cluster_resources()

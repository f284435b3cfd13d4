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

Requests the cluster can never satisfy (:func:`check_resources`) are refused before any MLflow
run: what a run (or one sweep trial) needs, ``ray.num_workers`` workers of :func:`worker_resources`
plus the trial's own slot, is compared with what the cluster has, or, on an autoscaling cluster,
with what its node groups can grow to (the cluster config the autoscaler publishes in the GCS).
A shortfall the autoscaler may still fill is waited for, at most ``ray.resource_timeout_s``
(:func:`wait_for_resources`, inside the run, which then ends FAILED with the same line).

The dashboard stays on: Ray Train's placement-group cleaner queries the State
API through it and logs an error every few seconds without it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import ray

from hardseg import timeline
from hardseg.config import HardsegConfig, RayConfig
from hardseg.errors import ConfigError
from hardseg.platform.console import ray_runtime_env
from hardseg.platform.worker_groups import Reaper

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
    if not ray.is_initialized():
        _start_or_join(cfg, trial_drivers)
    Reaper.start_once()  # the placement groups of Train controllers that die (hardseg.platform.worker_groups)
    return ray.cluster_resources()


def _start_or_join(cfg: RayConfig, trial_drivers: int) -> None:
    """``ray.init`` for :func:`ensure_ray`: join ``cfg.address`` (or ``RAY_ADDRESS``), else start a local runtime."""
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
        cpus = local_cpus(cfg)
        resources = {TRIAL_DRIVER_RESOURCE: trial_drivers} if trial_drivers else None
        # Ray's dashboard is several processes that start with the runtime and cost seconds of
        # every local command's start-up; local runs do not use it (jobs go to `cluster up`'s head,
        # which has one). HARDSEG_RAY_DASHBOARD=1 starts it.
        ray.init(num_cpus=cpus, resources=resources, include_dashboard=local_dashboard(), **common)
    timeline.mark("driver: ray.init done")


def stop_ray() -> None:
    """Leave Ray at the end of a command: :func:`ray.shutdown`, less a wait it always makes.

    For a runtime this process started, ``ray.shutdown`` stops Ray's processes one after another,
    each with a 1 s SIGTERM grace; the autoscaler monitor never exits within it (it is SIGKILLed after
    it every time, 1.0 s of a 1.4 s shutdown here), so it is SIGKILLed first. Joined clusters are
    only disconnected from, as by ``ray.shutdown``.
    """
    Reaper.stop_current()
    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)  # None when joined to a cluster
    for info in (node.all_processes.get("monitor", []) if node is not None else []):
        if info.process.poll() is None:
            info.process.kill()
    ray.shutdown()


def local_dashboard() -> bool:
    """Whether a local runtime starts Ray's dashboard: only with ``HARDSEG_RAY_DASHBOARD=1``."""
    return os.environ.get("HARDSEG_RAY_DASHBOARD", "0") == "1"


def local_cpus(cfg: RayConfig) -> int:
    """Logical CPUs of a local runtime: the machine's cores, or what the workers need when that is more."""
    return max(os.cpu_count() or 1, int(cfg.num_workers * cfg.cpus_per_worker + 0.999))


def worker_resources(cfg: HardsegConfig) -> dict[str, float]:
    """What one training worker reserves: ``ray.cpus_per_worker`` CPUs and, with ``ray.use_gpu``,
    ``ray.gpus_per_worker`` GPUs (a fraction lets trials share a GPU). The one place for both the
    Tune trial resources, Train's ``ScalingConfig`` and the sweep's concurrency."""
    res = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        res["GPU"] = cfg.ray.gpus_per_worker
    return res


def trial_resources(cfg: HardsegConfig, in_process: bool) -> dict[str, float]:
    """One-worker trials train in the trial's process; others only drive a TorchTrainer."""
    if in_process and cfg.ray.num_workers == 1:
        return worker_resources(cfg)
    return {TRIAL_DRIVER_RESOURCE: 1}


def concurrency(cfg: HardsegConfig, resources: dict[str, float], limit: int | None, num_trials: int) -> int:
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


def connect_ray(base_cfg: HardsegConfig) -> dict:
    """Join the cluster, or start a local Ray with one ``trial_driver`` slot per trial the cores fit."""
    per_trial = max(1, int(base_cfg.ray.num_workers * base_cfg.ray.cpus_per_worker))
    return ensure_ray(base_cfg.ray, trial_drivers=max(1, (os.cpu_count() or 1) // per_trial))


# -- requests the cluster can never satisfy -----------------------------------------------------------------
HINTS = {"GPU": "set ray.use_gpu=false, lower ray.num_workers or ray.gpus_per_worker, or join a cluster with "
                "GPUs (ray.address)",
         "CPU": "lower ray.num_workers or ray.cpus_per_worker, or join a larger cluster (ray.address)",
         TRIAL_DRIVER_RESOURCE: f"start the cluster's nodes with --resources='{{\"{TRIAL_DRIVER_RESOURCE}\": 4}}'"}


@dataclass
class ResourceNeed:
    """What a run (or one sweep trial) reserves: ``workers`` bundles of ``per_worker``, plus ``own``
    (a trial's slot: its driver, or nothing when it trains in its own process)."""

    what: str  # "hardseg train", "each sweep trial"
    workers: int
    per_worker: dict[str, float]
    own: dict[str, float] = field(default_factory=dict)

    def total(self) -> dict[str, float]:
        out = {k: self.workers * v for k, v in self.per_worker.items()}
        for k, v in self.own.items():
            out[k] = out.get(k, 0) + v
        return out

    def explain(self, key: str) -> str:
        """``2 GPUs (2 workers × 1 GPU, ray.gpus_per_worker)``: where the number comes from."""
        setting = {"GPU": "ray.use_gpu=true, ray.gpus_per_worker", "CPU": "ray.cpus_per_worker"}.get(key, key)
        n = self.total()[key]
        if key not in self.per_worker:
            return f"{_amount(n, key)} (the trial's own slot)"
        own = f" + {_amount(self.own[key], key)} for the trial" if key in self.own else ""
        return (f"{_amount(n, key)} ({self.workers} worker{'s' if self.workers > 1 else ''} × "
                f"{_amount(self.per_worker[key], key)}, {setting}{own})")


def _amount(n: float, key: str) -> str:
    value = f"{n:g}"
    return f"{value} {key}{'s' if n != 1 and key in ('CPU', 'GPU') else ''}"


def run_need(cfg: HardsegConfig) -> ResourceNeed:
    """``hardseg train``: ``ray.num_workers`` workers (Train's controller takes nothing)."""
    return ResourceNeed("hardseg train", cfg.ray.num_workers, worker_resources(cfg))


def trial_need(cfg: HardsegConfig, resources: dict[str, float]) -> ResourceNeed:
    """One sweep trial with ``resources`` (:func:`trial_resources`): itself, or its driver plus its workers."""
    if TRIAL_DRIVER_RESOURCE not in resources:
        return ResourceNeed("each sweep trial", 1, dict(resources))
    return ResourceNeed("each sweep trial", cfg.ray.num_workers, worker_resources(cfg), dict(resources))


@dataclass
class Capacity:
    """What the cluster has now, or can grow to (``autoscaling``), in all and on its largest node."""

    total: dict[str, float]
    largest_node: dict[str, float]
    autoscaling: bool = False


def capacity_now() -> Capacity:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    keys = {k for n in nodes for k in n}
    return Capacity(dict(ray.cluster_resources()), {k: max(n.get(k, 0) for n in nodes) for k in keys})


def autoscaling_capacity() -> Capacity | None:
    """The most the autoscaler's node groups can give (None: no autoscaler, a fixed cluster).

    Read from the cluster config the autoscaler publishes in the GCS (Ray's internal state API,
    the one Ray Data sizes itself with); an older or newer Ray without it counts as fixed."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # no such API in this Ray, or no GCS answer: a fixed cluster
        return None
    groups = [g for g in (config.node_group_configs if config is not None else []) if g.max_count != 0]
    if not groups:
        return None
    total: dict[str, float] = {}
    largest: dict[str, float] = {}
    for g in groups:
        count = g.max_count if g.max_count > 0 else 1_000_000  # -1: unbounded
        for k, v in g.resources.items():
            total[k] = total.get(k, 0) + count * v
            largest[k] = max(largest.get(k, 0), v)
    return Capacity(total, largest, autoscaling=True)


def shortfall(need: ResourceNeed, cap: Capacity) -> str | None:
    """One sentence naming the first resource ``need`` lacks on ``cap`` (None: it fits)."""
    where = "can autoscale to" if cap.autoscaling else "has"
    for key, n in sorted(need.total().items(), key=lambda kv: kv[0] != "GPU"):  # a missing GPU first
        have = cap.total.get(key, 0)
        if have + 1e-9 < n:
            return (f"{need.what} needs {need.explain(key)} but the Ray cluster {where} {_amount(have, key)}; "
                    f"{HINTS.get(key, f'add nodes with the {key} resource')}")
    for key, n in {**need.per_worker, **need.own}.items():
        largest = cap.largest_node.get(key, 0)
        if largest + 1e-9 < n:
            return (f"{need.what}: one worker needs {_amount(n, key)} on one node but the largest Ray node "
                    f"{where} {_amount(largest, key)}; {HINTS.get(key, f'add nodes with the {key} resource')}")
    return None


def precheck_local(need: ResourceNeed, cfg: RayConfig) -> None:
    """Before Ray starts: when hardseg would start a local runtime (no ``ray.address``/``RAY_ADDRESS``),
    refuse at once what this machine cannot give (its GPUs as torch counts them, CUDA_VISIBLE_DEVICES
    included), instead of starting Ray to find out."""
    if ray.is_initialized() or cfg.address or os.environ.get("RAY_ADDRESS"):
        return
    import torch  # local: torch is heavy; the callers have imported it already

    machine = {"CPU": float(local_cpus(cfg)), "GPU": float(torch.cuda.device_count()),
               TRIAL_DRIVER_RESOURCE: float("inf")}  # connect_ray declares the trial slots
    missing = shortfall(need, Capacity(machine, machine))
    if missing is not None:
        raise ConfigError(missing.replace("the Ray cluster has", "this machine (a local Ray runtime) has"))


def check_resources(need: ResourceNeed) -> str | None:
    """Refuse a request the cluster can never satisfy, before any run; returns the shortfall an
    autoscaling cluster may still fill (None: everything fits now), for :func:`wait_for_resources`.

    Raises:
        ConfigError: the request exceeds a fixed cluster, or every size the autoscaler can reach.
    """
    now = shortfall(need, capacity_now())
    if now is None:
        return None
    scaling = autoscaling_capacity()
    if scaling is None:
        raise ConfigError(now)
    grown = Capacity({k: max(v, capacity_now().total.get(k, 0)) for k, v in scaling.total.items()},
                     scaling.largest_node, autoscaling=True)
    never = shortfall(need, grown)
    if never is not None:
        raise ConfigError(never)
    return now


def wait_for_resources(need: ResourceNeed, missing: str | None, timeout_s: float, poll_s: float = 1.0) -> None:
    """On an autoscaling cluster, wait up to ``timeout_s`` (``ray.resource_timeout_s``) for ``need``
    to fit, with one progress line; then raise the shortfall as a ConfigError."""
    if missing is None:
        return
    print(f"[hardseg] waiting up to {timeout_s:g} s (ray.resource_timeout_s) for the autoscaler: {missing}",
          flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        missing_now = shortfall(need, capacity_now())
        if missing_now is None:
            return
        missing = missing_now
    raise ConfigError(f"{missing} (waited {timeout_s:g} s, ray.resource_timeout_s, for the autoscaler)")

"""The placement groups of Ray Train worker groups whose controller died, removed by the driver.

A Train controller reserves its workers' CPUs (GPUs) in a placement group that outlives the
controller if it dies without shutting its workers down, as it does when a Tune scheduler stops
the trial that drives it; the group lives as long as the job, holding the CPUs the next trials need.
Ray Train 2.60 starts a ``PlacementGroupCleaner`` actor per run for this, which asks Ray's State
API whether the controller lives. A local runtime without Ray's dashboard (hardseg's default,
:func:`hardseg.platform.cluster.local_dashboard`) has no State API: that cleaner printed "Failed to
query Ray Train Controller actor state" every second of every run, never saw a controller die, and
a local sweep waited forever for CPUs after the first trial its scheduler stopped.

hardseg leaves that cleaner out (:class:`hardseg.platform.trainer.HardsegTorchTrainer`). Instead each
controller records its worker group's placement group under its own actor id in Ray's key-value
store (:func:`record`, from :class:`hardseg.platform.train_callbacks.ControllerHooks`) and forgets it
when it shuts the group down; the driver's :class:`Reaper` thread (started by
:func:`hardseg.platform.cluster.ensure_ray`) removes the group of each recorded controller the GCS
reports dead.

A sweep trial that drives a Train run reuses its Tune actor for the next trial. When Tune stops such
a trial (its scheduler's decision, then the actor's reset for the next trial), the trial process stops
its Train run itself: each controller leaves a handle of itself under its run's name
(:func:`record_controller`), and the trial kills it (:func:`kill_controller`); the controller's
workers die with it, their placement group goes the way above. This module imports Ray only:
controllers and workers load it.
"""

from __future__ import annotations

import pickle
import threading

import ray
from ray.experimental import internal_kv as kv
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

NAMESPACE = "hardseg-worker-groups"  # Ray internal KV namespace: controller actor id -> placement group id
CONTROLLERS = "hardseg-train-controllers"  # Ray internal KV namespace: Train run name -> pickled controller handle


def record(controller_id: str, placement_group) -> None:
    """Called by a controller once its worker group is up: ``placement_group`` holds its workers."""
    kv._internal_kv_put(controller_id, placement_group.id.hex(), namespace=NAMESPACE)


def forget(controller_id: str) -> None:
    """Called by a controller that shut its worker group down (Ray Train removed the group)."""
    kv._internal_kv_del(controller_id, namespace=NAMESPACE)


def record_controller(run_name: str) -> None:
    """Called by a controller as it starts: a handle of itself under its Train run's name (a pickled actor
    handle works in any process of the cluster)."""
    handle = ray.get_runtime_context().current_actor
    kv._internal_kv_put(run_name, pickle.dumps(handle), overwrite=True, namespace=CONTROLLERS)


def forget_controller(run_name: str) -> None:
    kv._internal_kv_del(run_name, namespace=CONTROLLERS)


def kill_controller(run_name: str) -> bool:
    """Kill the controller of Train run ``run_name``, if one has recorded itself; returns whether one had."""
    value = kv._internal_kv_get(run_name, namespace=CONTROLLERS)
    if value is None:
        return False
    ray.kill(pickle.loads(value), no_restart=True)  # a controller that is gone already: nothing happens
    forget_controller(run_name)
    return True


def reap() -> int:
    """Remove the placement groups recorded by controllers that are dead; returns how many were removed."""
    removed = 0
    for key in kv._internal_kv_list("", namespace=NAMESPACE):
        controller = key.decode()
        # the GCS's actor table (Ray's State API needs the dashboard, which a local runtime lacks)
        if ray._private.state.actors(actor_id=controller).get("State") != "DEAD":
            continue
        value = kv._internal_kv_get(key, namespace=NAMESPACE)
        if value is not None:
            group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(value.decode())))
            if placement_group_table(group).get("state") not in (None, "REMOVED"):
                remove_placement_group(group)
                removed += 1
        kv._internal_kv_del(key, namespace=NAMESPACE)
    return removed


class Reaper(threading.Thread):
    """A daemon thread of the driver that calls :func:`reap` every ``interval_s`` seconds until stopped."""

    _current: Reaper | None = None

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__(name="hardseg-worker-group-reaper", daemon=True)
        self.interval_s, self.stopped = interval_s, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                reap()
            except Exception:  # Ray shut down under it, or a GCS call failed: try again next time
                if not ray.is_initialized():
                    return

    @classmethod
    def start_once(cls) -> None:
        """Start the driver's reaper unless it runs."""
        if cls._current is None or not cls._current.is_alive():
            cls._current = cls()
            cls._current.start()

    @classmethod
    def stop_current(cls) -> None:
        if cls._current is not None:
            cls._current.stopped.set()
            cls._current.join(timeout=5)
            cls._current = None

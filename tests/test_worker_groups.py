"""Placement groups of Train controllers that die are removed by the driver (hardseg.platform.worker_groups)."""

from __future__ import annotations

import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from hardseg.config import load_config
from hardseg.platform import worker_groups
from hardseg.platform.sweep import run_sweep
from hardseg.search_spaces import SearchSpace

from conftest import small_overrides, trial_actors

pytestmark = [pytest.mark.ray]


@ray.remote(num_cpus=0)
class Controller:
    """Stands in for a Train controller: holds a placement group and records it as ControllerHooks does."""

    def reserve(self) -> str:
        self.held = placement_group([{"CPU": 1}])
        ray.get(self.held.ready(), timeout=60)
        worker_groups.record(ray.get_runtime_context().get_actor_id(), self.held)
        return self.held.id.hex()

    def held_group(self):
        return self.held

    def release(self) -> None:
        worker_groups.forget(ray.get_runtime_context().get_actor_id())


def _state(group_hex: str) -> str:
    return placement_group_table().get(group_hex, {}).get("state", "REMOVED")


def _recorded() -> list[bytes]:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_list("", namespace=worker_groups.NAMESPACE)


def test_a_dead_controllers_group_is_removed_and_a_live_ones_kept(ray_local):
    worker_groups.Reaper.stop_current()  # this test calls reap() itself
    alive, dead = Controller.remote(), Controller.remote()
    kept, lost = ray.get(alive.reserve.remote()), ray.get(dead.reserve.remote())
    assert worker_groups.reap() == 0 and _state(lost) == "CREATED"  # both controllers live
    ray.kill(dead)
    deadline = time.time() + 30
    removed = 0
    while time.time() < deadline and not removed:
        removed = worker_groups.reap()  # once the GCS has the actor DEAD
        time.sleep(0.2)
    assert removed == 1 and _state(lost) == "REMOVED" and _state(kept) == "CREATED"
    ray.get(alive.release.remote())  # a controller that shut its group down (and removed it) forgets it
    assert _recorded() == []
    remove_placement_group(ray.get(alive.held_group.remote()))
    ray.kill(alive)


def test_trainers_leave_out_the_state_api_cleaner_and_the_dataset_manager(tmp_path):
    from ray.train.torch import TorchTrainer

    from hardseg.platform.trainer import DatasetsCallback, PlacementGroupCleanerCallback, make_trainer

    left_out = (PlacementGroupCleanerCallback, DatasetsCallback)
    assert None not in left_out  # Ray 2.60 has both: the override acts
    cfg = load_config(None, [f"ray.storage_path={tmp_path}"])
    ours = make_trainer(cfg, "0" * 32, f"sqlite:///{tmp_path / 'm.db'}")._create_default_callbacks()
    rays = TorchTrainer(lambda: None)._create_default_callbacks()
    assert not any(isinstance(c, left_out) for c in ours)
    assert all(any(isinstance(c, kind) for c in rays) for kind in left_out)
    assert {type(c) for c in ours if not type(c).__module__.startswith("hardseg.")} == {
        type(c) for c in rays if not isinstance(c, left_out)}  # the rest as Ray's


@pytest.mark.slow
def test_a_ddp_sweep_goes_on_after_its_scheduler_stops_a_trial(ray_local, data_root, sqlite_uri, tmp_path, capfd):
    """Three 2-worker trials, one at a time on the session's 2 CPUs, in one reused trial process: ASHA stops
    the second (learning rate 1e-12: the untrained model) after epoch 1, and the third still gets its CPUs. Before
    hardseg.platform.worker_groups the stopped trial's worker placement group kept both CPUs and the
    sweep waited forever; Ray's cleaner printed "Failed to query Ray Train Controller actor state"."""
    space = SearchSpace.from_dict({"name": "stop", "params": {"train.lr": {"categorical": [1e-12, 0.01]}},
                                   "sweep": {"num_samples": 3, "metric": "val/miou", "mode": "max", "seed": 0,
                                             "max_concurrent": 1,
                                             "scheduler": {"type": "asha", "grace_period": 1,
                                                           "reduction_factor": 2}}}, source="stop")
    overrides = small_overrides(data_root, **{"ray.storage_path": str(tmp_path / "runs"), "tracking.uri": sqlite_uri,
                                              "data.eval_domains": "[]", "ray.num_workers": 2})
    seen, done = set(), threading.Event()

    def watch_trial_processes():
        while not done.wait(0.1):
            seen.update(p.pid for p in trial_actors())

    watcher = threading.Thread(target=watch_trial_processes, daemon=True)
    watcher.start()
    try:
        out = run_sweep(space, overrides=overrides, name="stop", workdir=tmp_path)
    finally:
        done.set()
        watcher.join()
    # One trial process for all three trials: Tune reset it for trial 3 although the stopped trial 2 was in
    # TorchTrainer.fit, which trial.FitStopper ended (a failed reset fails trial 3: "requires reset_config()")
    assert len(seen) == 1, seen
    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name("hardseg").experiment_id], order_by=["start_time"])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    trials = [(r.data.params["train.lr"], r.info.status) for r in children]
    # TPE's seeded start-up samples (choice indices 1, 0, 1): 0.01, then 1e-12, which ASHA stops after epoch 1
    # against the first trial's epoch 1, then a third trial, which needs the CPUs the stopped one held
    assert trials[:2] == [("0.01", "FINISHED"), ("1e-12", "KILLED")], trials
    # closed by the stopped trial itself (FitStopper), not by the driver's close_open_runs ("the ASHA scheduler")
    stopped = [r for r in runs if r.data.params.get("train.lr") == "1e-12"][0]
    assert stopped.data.tags["hardseg.stop_reason"] == "stopped by the scheduler after epoch 1 of 2", stopped.data.tags
    assert len(trials) == 3 and trials[2][1] in {"FINISHED", "KILLED"}, trials
    assert all(r.data.params["ray.num_workers"] == "2" for r in children)
    for r in children:  # a finished trial logs the model of its TorchTrainer's last checkpoint
        if r.info.status == "FINISHED":
            assert {a.path for a in client.list_artifacts(r.info.run_id, "model")} >= {"model/model_export.pt"}
    assert out.statuses.get("FINISHED", 0) + out.statuses.get("KILLED", 0) == 3
    deadline = time.time() + 10  # the reaper's next round for a group of a trial stopped last
    while _recorded() and time.time() < deadline:
        time.sleep(0.2)
    assert _recorded() == []  # every group removed: by Ray Train, or by the reaper
    printed = capfd.readouterr()
    assert "PlacementGroupCleaner" not in printed.out + printed.err

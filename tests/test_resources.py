"""Requests the cluster can never satisfy: refused before any run (a fixed cluster), or waited for at most
``ray.resource_timeout_s`` and then FAILED (an autoscaling cluster)."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from hardseg.config import load_config
from hardseg.errors import ConfigError
from hardseg.platform.cluster import (Capacity, ResourceNeed, check_resources, run_need, shortfall, trial_need,
                                      trial_resources)

from conftest import small_overrides
from test_cli_errors import _check, _no_runs


def test_shortfalls_name_the_resource_the_count_and_the_setting():
    cfg = load_config(None, ["ray.use_gpu=true", "ray.num_workers=2"])
    none = Capacity({"CPU": 16, "GPU": 0}, {"CPU": 8, "GPU": 0})
    assert shortfall(run_need(cfg), none) == (
        "hardseg train needs 2 GPUs (2 workers × 1 GPU, ray.use_gpu=true, ray.gpus_per_worker) but the Ray cluster "
        "has 0 GPUs; set ray.use_gpu=false, lower ray.num_workers or ray.gpus_per_worker, or join a cluster with "
        "GPUs (ray.address)")
    # enough in all, but no node holds one worker's 4 CPUs
    big = load_config(None, ["ray.cpus_per_worker=4", "ray.num_workers=2"])
    msg = shortfall(run_need(big), Capacity({"CPU": 12}, {"CPU": 2}))
    assert msg.startswith("hardseg train: one worker needs 4 CPUs on one node but the largest Ray node has 2 CPUs")
    # a DDP sweep trial: its driver's slot plus its workers; fractions of a GPU add up
    frac = load_config(None, ["ray.use_gpu=true", "ray.gpus_per_worker=0.5", "ray.num_workers=2"])
    need = trial_need(frac, trial_resources(frac, in_process=True))
    assert need.total() == {"CPU": 2, "GPU": 1.0, "trial_driver": 1}
    assert shortfall(need, Capacity({"CPU": 2, "GPU": 1, "trial_driver": 1}, {"CPU": 2, "GPU": 1,
                                                                             "trial_driver": 1})) is None
    assert "the trial's own slot" in shortfall(need, Capacity({"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}))


def test_use_gpu_without_gpus_is_one_line_before_any_run(capsys, sqlite_uri, data_root):
    """64 GPUs: more than this machine (or a lent GPU box) has, so the line is the same everywhere."""
    start = time.perf_counter()
    line = _check(capsys, ["train", *sum((["--set", o] for o in small_overrides(data_root)), []),
                           "--set", "ray.use_gpu=true", "--set", "ray.num_workers=64", "--tracking-uri", sqlite_uri],
                  "hardseg train needs 64 GPUs (64 workers × 1 GPU, ray.use_gpu=true", "set ray.use_gpu=false")
    print(f"{line}  [{time.perf_counter() - start:.1f} s]")
    assert _no_runs(sqlite_uri)


@pytest.mark.ray
def test_a_fixed_cluster_refuses_what_it_lacks(ray_local):
    cfg = load_config(None, ["ray.cpus_per_worker=3", "ray.num_workers=1"])
    with pytest.raises(ConfigError, match=r"^hardseg train needs 3 CPUs \(1 worker × 3 CPUs, ray.cpus_per_worker\) "
                                          r"but the Ray cluster has 2 CPUs"):
        check_resources(run_need(cfg))
    assert check_resources(run_need(load_config(None, ["ray.num_workers=2"]))) is None


@pytest.fixture()
def autoscaler_config(ray_local):
    """The cluster config an autoscaler publishes in the GCS (one node group of 1-GPU nodes, at most 2), so
    the local runtime reads as an autoscaling cluster; no node ever comes, as when the cloud has none."""
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu", min_count=0, max_count=2)
    group.resources.update({"CPU": 4, "GPU": 1})
    ns, key = GCS_AUTOSCALER_STATE_NAMESPACE.encode(), GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()
    internal_kv._internal_kv_put(key, config.SerializeToString(), overwrite=True, namespace=ns)
    yield
    internal_kv._internal_kv_del(key, namespace=ns)


@pytest.mark.ray
def test_an_autoscaling_cluster_waits_then_fails_the_run(autoscaler_config, data_root, sqlite_uri, capsys):
    from hardseg.platform.train_job import run_training

    # more GPUs than the node groups can ever give: refused at once, no run
    never = load_config(None, small_overrides(data_root, **{"ray.use_gpu": "true", "ray.num_workers": 3,
                                                            "tracking.uri": sqlite_uri}))
    with pytest.raises(ConfigError, match=r"needs 3 GPUs .* but the Ray cluster can autoscale to 2 GPUs"):
        run_training(never)
    assert _no_runs(sqlite_uri)
    # within what it can grow to: one progress line, a bounded wait, then the same line and the run FAILED
    cfg = load_config(None, small_overrides(data_root, **{"ray.use_gpu": "true", "ray.num_workers": 1,
                                                          "ray.resource_timeout_s": 2, "tracking.uri": sqlite_uri}))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_training(cfg)
    waited = time.perf_counter() - start
    assert str(err.value) == ("hardseg train needs 1 GPU (1 worker × 1 GPU, ray.use_gpu=true, ray.gpus_per_worker) "
                              "but the Ray cluster has 0 GPUs; set ray.use_gpu=false, lower ray.num_workers or "
                              "ray.gpus_per_worker, or join a cluster with GPUs (ray.address) (waited 2 s, "
                              "ray.resource_timeout_s, for the autoscaler)")
    progress = [ln for ln in capsys.readouterr().out.splitlines() if "waiting up to" in ln]
    assert progress == ["[hardseg] waiting up to 2 s (ray.resource_timeout_s) for the autoscaler: hardseg train "
                        "needs 1 GPU (1 worker × 1 GPU, ray.use_gpu=true, ray.gpus_per_worker) but the Ray cluster "
                        "has 0 GPUs; set ray.use_gpu=false, lower ray.num_workers or ray.gpus_per_worker, or join a "
                        "cluster with GPUs (ray.address)"]
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and run.data.tags["hardseg.error"] == str(err.value)
    print(f"waited and failed in {waited:.1f} s; run {run.info.run_id} FAILED")


def test_a_local_ray_starts_its_dashboard_only_when_asked(monkeypatch):
    from hardseg.platform.cluster import local_dashboard

    monkeypatch.delenv("HARDSEG_RAY_DASHBOARD", raising=False)
    assert local_dashboard() is False
    monkeypatch.setenv("HARDSEG_RAY_DASHBOARD", "1")
    assert local_dashboard() is True

"""Shared fixtures: a real local Ray runtime, real MLflow stores, small synthetic data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hardseg.platform.local_cluster import server_env

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray's log monitor re-reads its log folder's file list every 0.1 s while the folder holds fewer than this
# many files, and the suite's runtimes gather hundreds of worker logs (≈40 CPU-s of a run, measured):
# with 0 it re-reads the list every 0.5 s (LOG_NAME_UPDATE_INTERVAL_S); lines are still all printed.
# The two-node cluster's nodes are started without the suite's RAY_* settings.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# Nor do the suite's runtimes start idle workers ahead of need for their first driver (Ray's prestart): most of
# them are never used (31 in a run, ≈38 CPU-s), as Train's actors need workers with their own runtime_env.
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)


def pytest_collection_modifyitems(config, items):
    """The order of ``pytest -n 2 --dist loadscope --no-loadscope-reorder`` (pyproject.toml), which gives each
    worker whole modules (a module-scoped fixture, such as the two-node cluster, is built once) in the order of
    their first test here: the modules holding a test marked ``slow`` first, then those with ``ray`` tests, then
    the rest, so neither worker ends on a long module. Within a module the tests keep their order."""

    def weight(item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("ray") else 2

    module_weight: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        module_weight[item.module.__name__] = min(module_weight.get(item.module.__name__, 2), weight(item))
        first.setdefault(item.module.__name__, i)
    items.sort(key=lambda item: (module_weight[item.module.__name__], first[item.module.__name__]))


def write_plugin_distribution(root: Path, module: str, source: str, group: str, entries: list[str]) -> Path:
    """A real distribution in ``root``: package ``module`` plus ``*.dist-info`` whose entry_points.txt puts
    ``entries`` (``name = module:object``) in ``group``. On ``sys.path`` or ``PYTHONPATH``,
    importlib.metadata reads it as installed. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{e}\n" for e in entries))
    return root


def fresh_registry(monkeypatch: pytest.MonkeyPatch, registry) -> None:
    """A :class:`hardseg.plugins.Registry` that reads the entry points again, on a copy of its names;
    undone after the test."""
    registry.load()  # the state the test's end restores: loaded, as the rest of the session sees it
    monkeypatch.setattr(registry, "items", dict(registry.items))
    monkeypatch.setattr(registry, "broken", {})
    monkeypatch.setattr(registry, "loaded", False)


def small_overrides(data_root: Path, **extra) -> list[str]:
    """``--set`` overrides for a fast run on the small test dataset."""
    base = {
        "data.root": str(data_root),
        "data.synthetic.size": 32,
        "data.synthetic.n_train": 64,
        "data.synthetic.n_val": 32,
        "data.synthetic.n_shift": 16,
        "train.epochs": 2,
        "train.batch_size": 8,
        "data.eval_domains": "[fog-3]",
        # the MLflow-format model costs an mlflow.pytorch import per process; tests that check it turn it on
        "tracking.log_model": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def trial_actors() -> list:
    """The live Tune trial actors of this session's Ray runtime: processes titled ``ray::ImplicitFunc``
    (Ray sets the title) that descend from this process, whose ``ray.init`` started the raylet. Found
    from the process table, as the state API needs the dashboard the suite's runtime goes without."""
    import psutil

    actors = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmdline = p.cmdline()  # once: a process that exits meanwhile reads as []
        except psutil.Error:  # gone meanwhile
            continue
        if cmdline[:1] and cmdline[0].startswith("ray::ImplicitFunc"):
            actors.append(p)
    return actors


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one thread is fastest and immune to a busy machine's oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The small synthetic set, generated once per session."""
    from hardseg.config import SyntheticConfig
    from hardseg.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data")
    ensure_synthetic(root, SyntheticConfig(size=32, n_train=64, n_val=32, n_shift=16, seed=0))
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray runtime for the session (2 CPUs, like CI; trial-driver slots for sweeps)."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, resources={"trial_driver": 2}, logging_level="WARNING", include_dashboard=False)
    yield ray
    from hardseg.platform.worker_groups import Reaper

    Reaper.stop_current()  # the in-process drivers' reaper thread, before Ray goes
    ray.shutdown()


@pytest.fixture(scope="session")
def _mlflow_schema(tmp_path_factory) -> Path:
    """An MLflow SQLite store with MLflow's tables and nothing else, made once per session: creating
    them (MLflow's migrations) takes 1.5-2.5 s a store here, which a test copying this file skips. Made in a
    subprocess, so MLflow's "Creating initial MLflow database tables" lines reach no test's captured output."""
    db = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    out = subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                          "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{db}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and db.is_file(), out.stderr[-2000:]
    return db


@pytest.fixture()
def unopened_sqlite_uri(tmp_path) -> str:
    """An MLflow SQLite URI whose file does not exist yet: for a test that checks the store is never opened."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True)
    return f"sqlite:///{db}"


@pytest.fixture()
def sqlite_uri(unopened_sqlite_uri, _mlflow_schema) -> str:
    """A new, empty MLflow SQLite store of the test's own (a copy of the session's schema-only store)."""
    shutil.copyfile(_mlflow_schema, unopened_sqlite_uri[len("sqlite:///"):])
    return unopened_sqlite_uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and local artifacts, started as ``hardseg cluster
    up`` starts its own (:func:`hardseg.platform.local_cluster.server_env`)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not become healthy in 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()

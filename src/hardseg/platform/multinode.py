"""Multi-node safety checks, run by a sweep's driver before the parent MLflow run or any trial.

On a cluster with more than one alive node, every node's trials write to the
same MLflow store, the same Optuna study and the same checkpoint folder, so:

* ``tracking.uri`` must be a tracking server (``http(s)://``) or a database
  server, not a SQLite file or a local folder (one machine only);
* the Optuna storage must not be SQLite (``tracking.optuna_storage``:
  PostgreSQL);
* ``ray.storage_path`` must be shared: a URI with a scheme (``s3://``,
  ``gs://``, ...) is taken as shared; a local path is checked for real: the
  driver writes a marker file there and a task pinned to each node must see it;
* a loopback host (127.0.0.1, localhost) in those URIs works only while all
  nodes are on this machine.

Each refusal is one :class:`~hardseg.errors.ConfigError` line naming the key to fix.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hardseg.errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CHECK_TIMEOUT_S = 120


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def is_local_store(uri: str) -> bool:
    """SQLite, ``file:`` or a plain path: a store only this machine sees."""
    scheme = urlparse(uri).scheme.lower()
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # 'c:' paths


def _loopback(uri: str) -> bool:
    return (urlparse(uri).hostname or "") in LOOPBACK


def _sees(marker: str, token: str) -> tuple[str, bool]:
    """Runs on one node: does it see the marker the driver wrote?"""
    path = Path(marker)
    try:
        return socket.gethostname(), path.is_file() and path.read_text() == token
    except OSError:
        return socket.gethostname(), False


def check_shared_path(path: str, nodes: list[dict], key: str = "ray.storage_path") -> None:
    """Refuse a local ``path`` that some node does not see (a task pinned to each node looks for a marker)."""
    if "://" in path and not path.startswith("file://"):
        return
    folder = Path(path.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = folder / f".hardseg-shared-{token}"
    marker.write_text(token)
    try:
        sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in nodes}
        try:
            answers = dict(zip(refs, ray.get(list(refs.values()), timeout=CHECK_TIMEOUT_S)))
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"{key}: could not check within {CHECK_TIMEOUT_S} s that every Ray node sees {folder}; "
                              f"use shared storage (an NFS path mounted on every node, or s3://...)") from None
    finally:
        marker.unlink(missing_ok=True)
    for node_id, (host, seen) in answers.items():
        if not seen:
            ip = next(n["NodeManagerAddress"] for n in nodes if n["NodeID"] == node_id)
            raise ConfigError(f"{key}={folder} is not visible from Ray node {node_id[:12]} ({host}, {ip}): on a "
                              f"multi-node cluster set {key} to shared storage (a path mounted on every node, "
                              f"or s3://...)")


def check_multinode(tracking_uri: str, optuna_storage: str | None, storage_path: str) -> int:
    """The checks above when Ray has more than one alive node; returns the number of nodes.

    Raises:
        ConfigError: a store or path that not every node can share.
    """
    nodes = alive_nodes()
    if len(nodes) < 2:
        return len(nodes)
    n = len(nodes)
    if is_local_store(tracking_uri):
        raise ConfigError(f"tracking.uri={tracking_uri} is a local store, but the Ray cluster has {n} nodes: use an "
                          f"MLflow tracking server (--tracking-uri http://HOST:5000, 'mlflow server' with a "
                          f"PostgreSQL backend)")
    if optuna_storage and optuna_storage.startswith("sqlite"):
        raise ConfigError(f"the Optuna storage {optuna_storage} is SQLite, but the Ray cluster has {n} nodes: set "
                          f"tracking.optuna_storage=postgresql+psycopg2://USER@HOST:5432/DB")
    hosts = {node["NodeManagerAddress"] for node in nodes}
    if len(hosts) > 1:
        for key, uri in (("tracking.uri", tracking_uri), ("tracking.optuna_storage", optuna_storage or "")):
            if _loopback(uri):
                raise ConfigError(f"{key}={uri} names this machine's loopback address, but the Ray nodes are on "
                                  f"{len(hosts)} hosts: use a host name every node reaches")
    check_shared_path(storage_path, nodes)
    return n


__all__ = ["check_multinode", "check_shared_path", "is_local_store", "alive_nodes"]

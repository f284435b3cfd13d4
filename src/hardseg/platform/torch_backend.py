"""Ray Train's torch backend, driven from a Train controller that never imports torch.

Ray's ``TorchConfig`` lives in ``ray.train.torch.config``, which imports torch at its top. The
controller of every run unpickles the backend config (and the backend its callbacks hold), so with
Ray's class each controller process spends ≈1.5 s importing torch (about a third of its start-up on
a 2-core machine, ``benchmarks/README.md``) to set up a process group it never joins.
:class:`TorchBackendConfig` is the same configuration in a module that imports no torch: its backend
does in the controller only what needs no torch (the rendezvous address, which processes to call)
and runs Ray's own worker-side functions (``ray.train.torch.config``: the ``RANK``/``LOCAL_RANK``
environment, ``init_process_group``, the shutdown) on the workers, which load torch to train anyway.
The workers' context (Ray's ``TorchConfigContextManager``: each worker's CUDA device) is Ray's too.

Not supported here, as hardseg never asks for them: TPUs (``tpu_dist``) and Ray's ``init_method="tcp"``
(the rendezvous is always ``env://``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S

try:  # Ray Train V2's framework tag (its state export); another Ray may not have it
    from ray.train.v2._internal.util import TrainingFramework
except ImportError:  # pragma: no cover
    TrainingFramework = None


def _on_worker(name: str, **kwargs: Any) -> Any:
    """Run Ray's worker-side torch function ``name`` (``ray.train.torch.config``) in a training worker."""
    # local: torch is imported by the workers, which train with it, never by the controller (module docstring)
    from ray.train.torch import config

    return getattr(config, name)(**kwargs)


def _set_rendezvous(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)


class _WorkerContext:
    """Ray's ``TorchConfigContextManager`` around each worker's training function (its CUDA device),
    resolved in the worker."""

    def __enter__(self):
        # local: in the worker only (module docstring)
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc) -> bool:
        return self._inner.__exit__(*exc)


class _TorchBackend(Backend):
    """``init_process_group`` on every worker with rank 0's address (``env://``), as Ray's torch backend."""

    share_cuda_visible_devices: bool = True  # NCCL needs every GPU of a node visible to its workers

    def on_start(self, worker_group, backend_config: TorchBackendConfig) -> None:
        backend = backend_config.backend or ("nccl" if worker_group.get_resources_per_worker().get("GPU", 0) else "gloo")
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_rendezvous, addr=addr, port=port)
        worker_group.execute(_on_worker, "_set_torch_distributed_env_vars")
        ray.get([worker_group.execute_single_async(rank, _on_worker, "_setup_torch_process_group", backend=backend,
                                                   world_rank=rank, world_size=len(worker_group),
                                                   init_method="env://", timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig) -> None:
        futures = worker_group.execute_async(_on_worker, "_shutdown_torch", destroy_process_group=len(worker_group) > 1)
        timeout_s = float(os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                         DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S))
        try:
            ray.get(futures, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            pass  # the workers are being torn down anyway, as Ray's backend does after a warning


@dataclass
class TorchBackendConfig(BackendConfig):
    """Ray's ``TorchConfig`` (``backend``: ``gloo``/``nccl``, None picks by GPU; ``timeout_s`` of the
    process group's operations) for ``TorchTrainer(torch_config=...)``, importable without torch."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _TorchBackend

    @property
    def train_func_context(self):
        return _WorkerContext

    @property
    def framework(self):
        return TrainingFramework.TORCH if TrainingFramework is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}  # always env://

"""The Train workers' process group: on a local cluster served on 127.0.0.1 only; torch imported by the workers only.

Ray Train's TorchConfig sets the process group up with `init_process_group("env://")`: rank 0 starts torch's
TCPStore, whose server listens on every interface (torch has no option to bind it elsewhere), and Gloo and NCCL pick
a network interface by the host name. On a cluster whose node address is loopback (the local Ray that
`harness.console.init_ray` starts, see `local_ray_environment`), `LoopbackTorchConfig` serves the store on a
socket bound to 127.0.0.1 (torch's `master_listen_fd`) and sets `GLOO_SOCKET_IFNAME`/`NCCL_SOCKET_IFNAME` to the
loopback interface (unless set); torch's rendezvous then reuses that store (`multi_tenant`, same port). On any
other cluster, Ray's own TorchConfig backend sets the group up.

Train's controller unpickles this config before it starts the workers, and Ray's TorchConfig lives in a module that
imports torch (3 s of a run's start on a 2-core node). So this module imports no torch: the functions that the
workers run import Ray's process-group helpers (`ray.train.torch.config`, private parts of Ray Train 2.60) when
they run, and the controller imports Ray's backend only on a cluster that is not loopback. tests/test_loopback.py
runs the loopback path on a real local cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
from ray._private import ray_constants
from ray.exceptions import GetTimeoutError
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.util import TrainingFramework

from harness.console import is_loopback

logger = logging.getLogger(__name__)

LOOPBACK_INTERFACE = "lo0" if sys.platform == "darwin" else "lo"
_served: list[Any] = []  # rank 0's listening socket and store, alive as long as the worker process


def serve_store_on_loopback(world_size: int, timeout_s: int) -> int:
    """On rank 0: a TCPStore server listening on 127.0.0.1 only; returns its port."""
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(max(world_size, 128))
    port = listener.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False, multi_tenant=True, master_listen_fd=listener.fileno(),
                          use_libuv=True)
    _served[:] = [listener, store]
    return port


def use_loopback(port: int) -> None:
    """On every worker: the rendezvous and the collectives' sockets on loopback."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", LOOPBACK_INTERFACE)


# Ray's helpers, run on the workers (which import torch anyway) and looked up there.
def set_distributed_env_vars() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def setup_process_group(**kwargs: Any) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def shutdown_torch(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class WorkerDevice:
    """TorchConfig's context around the training function: on a GPU worker, torch's current device is the worker's."""

    def __enter__(self) -> None:
        from ray.train.torch.config import TorchConfigContextManager

        TorchConfigContextManager().__enter__()

    def __exit__(self, *exc: object) -> bool:
        return False


class LoopbackTorchBackend(Backend):
    share_cuda_visible_devices = True  # as Ray's torch backend

    def on_start(self, worker_group: Any, backend_config: LoopbackTorchConfig) -> None:
        if not is_loopback(worker_group.execute_single(0, ray.util.get_node_ip_address)):
            from ray.train.torch.config import _TorchBackend  # imports torch, here on a cluster only

            _TorchBackend().on_start(worker_group, backend_config)
            return
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
        world_size = len(worker_group)
        port = worker_group.execute_single(0, serve_store_on_loopback, world_size=world_size,
                                           timeout_s=backend_config.timeout_s)
        worker_group.execute(use_loopback, port=port)
        if not isinstance(worker_group, V1WorkerGroup):  # as Ray's on_start: LOCAL_RANK and the rest (Train v2)
            worker_group.execute(set_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, setup_process_group, backend=backend, world_rank=rank,
                                                   world_size=world_size, init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(world_size)])

    def on_shutdown(self, worker_group: Any, backend_config: LoopbackTorchConfig) -> None:
        """As Ray's torch backend: the group destroyed (more than one worker), CUDA's cache emptied, in time."""
        futures = worker_group.execute_async(shutdown_torch, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                              DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %d s", timeout_s)

    def on_training_start(self, worker_group: Any, backend_config: LoopbackTorchConfig) -> None:
        if isinstance(worker_group, V1WorkerGroup):  # as Ray's torch backend (Train v1 only)
            worker_group.execute(set_distributed_env_vars)


@dataclass
class LoopbackTorchConfig(BackendConfig):
    """Ray's TorchConfig (the same fields, the same process group), whose process group stays on 127.0.0.1 when the
    cluster's node address is loopback, and which Train's controller unpickles without importing torch."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[LoopbackTorchBackend]:
        return LoopbackTorchBackend

    @property
    def train_func_context(self) -> type[WorkerDevice]:
        return WorkerDevice

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}

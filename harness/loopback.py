"""The Train workers' process group on a local cluster, served on 127.0.0.1 only.

Ray Train's TorchConfig sets the process group up with `init_process_group("env://")`: rank 0 starts torch's
TCPStore, whose server listens on every interface (torch has no option to bind it elsewhere), and Gloo and NCCL pick
a network interface by the host name. On a cluster whose node address is loopback (the local Ray that
`harness.console.init_ray` starts, see `local_ray_environment`), `LoopbackTorchConfig` serves the store on a
socket bound to 127.0.0.1 (torch's `master_listen_fd`) and sets `GLOO_SOCKET_IFNAME`/`NCCL_SOCKET_IFNAME` to the
loopback interface (unless set); torch's rendezvous then reuses that store (`multi_tenant`, same port). On any
other cluster it is Ray's TorchConfig unchanged.

It reuses private parts of Ray Train 2.60: the process-group helpers that its own `on_start` runs
(`ray.train.torch.config`); tests/test_loopback.py runs this path on a real local cluster.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
import torch.distributed as dist
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

from harness.console import is_loopback

LOOPBACK_INTERFACE = "lo0" if sys.platform == "darwin" else "lo"
_served: list[Any] = []  # rank 0's listening socket and store, alive as long as the worker process


def serve_store_on_loopback(world_size: int, timeout_s: int) -> int:
    """On rank 0: a TCPStore server listening on 127.0.0.1 only; returns its port."""
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


class LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        if not is_loopback(worker_group.execute_single(0, ray.util.get_node_ip_address)):
            super().on_start(worker_group, backend_config)
            return
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
        world_size = len(worker_group)
        port = worker_group.execute_single(0, serve_store_on_loopback, world_size=world_size,
                                           timeout_s=backend_config.timeout_s)
        worker_group.execute(use_loopback, port=port)
        if not isinstance(worker_group, V1WorkerGroup):  # as Ray's on_start: LOCAL_RANK and the rest (Train v2)
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                                                   world_size=world_size, init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(world_size)])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """TorchConfig whose process group stays on 127.0.0.1 when the cluster's node address is loopback."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return LoopbackTorchBackend

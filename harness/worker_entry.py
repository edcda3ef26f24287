"""What runs the training loop (harness.worker): start the stream, then import and run the loop. On Ray Train's
workers (`train_loop_per_worker`), or in the calling process (`train_in_process`, train.in_process).

Ray imports a train function's module before it calls the function, and `harness.worker` imports torch's compiler
stack (through `harness.step`), the objectives and the quick probe: 2.2 s in a worker that has torch loaded already.
This module imports none of that, so a worker asks Ray Data for its first batch first, and those imports, like the
model's build, run while Ray Data starts its own processes (its coordinator, the read and the masking tasks).
The loop's objects (the masking stage, the quick probe's tasks) arrive as bytes (harness.pretrain.train), unpickled
here: Train's controller, which holds the loop's config too, never imports what they refer to (torch, the objectives).
"""

from __future__ import annotations

import time
from typing import Any

import ray.data
import ray.train
import ray.train.torch
import torch
from ray import cloudpickle

from harness.stream import device_batches, started


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """A Ray Train worker's loop, on its shard of the stream."""
    entered = time.perf_counter()
    # The driver's fit() to here (wall clocks: across machines, as good as their sync; after a worker failure it
    # includes the failed attempt).
    worker_start_s = time.time() - loop_config["fit_called_at"]
    _run(loop_config, ray.train.get_dataset_shard("train"), ray.train.torch.get_device(), entered, worker_start_s)


def train_in_process(loop_config: dict[str, Any], stream: ray.data.Dataset, use_gpu: bool) -> None:
    """The loop in this process, as the only worker, on the whole stream (train.in_process): the process's GPU (in a
    study's trial, the one its bundle holds) or the CPU."""
    entered = time.perf_counter()
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    _run(loop_config, stream.iterator(), device, entered, time.time() - loop_config["fit_called_at"])


def _run(loop_config: dict[str, Any], shard: ray.data.DataIterator, device: torch.device, entered: float,
         worker_start_s: float) -> None:
    batches = started(device_batches(shard, device))
    loop = {**loop_config, **cloudpickle.loads(loop_config["pickled"])}
    from harness.worker import train_loop  # seconds of imports, now overlapped with Ray Data's start

    train_loop(loop, batches, device, entered, worker_start_s)

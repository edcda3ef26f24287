"""What Ray Train runs in each worker: start the stream, then import and run the training loop (harness.worker).

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

import ray.train
import ray.train.torch
from ray import cloudpickle

from harness.stream import device_batches, started


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    entered = time.perf_counter()
    # The driver's fit() to here (wall clocks: across machines, as good as their sync; after a worker failure it
    # includes the failed attempt).
    worker_start_s = time.time() - loop_config["fit_called_at"]
    batches = started(device_batches(ray.train.get_dataset_shard("train"), ray.train.torch.get_device()))
    loop = {**loop_config, **cloudpickle.loads(loop_config["pickled"])}
    from harness.worker import train_loop  # seconds of imports, now overlapped with Ray Data's start

    train_loop(loop, batches, entered, worker_start_s)

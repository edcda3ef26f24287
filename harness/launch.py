"""The only module that builds Ray trainers (and, for studies, tuners): scaling, failure, storage.

Resources: each Train worker asks for `train.cpus_per_worker` CPUs (+1 GPU with train.use_gpu).
On a 2-CPU machine keep workers fractional (e.g. 2 x 0.5) so Ray Data's readers can still be
scheduled; a pipeline that cannot get a CPU hangs. On GPU nodes give each worker its GPU and one or
two CPUs, and leave the node's other CPUs to Ray Data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray.data
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from harness.config import Config


def build_trainer(cfg: Config, train_loop: Callable[[dict], None], loop_config: dict[str, Any],
                  datasets: dict[str, ray.data.Dataset], name: str, storage_path: Path,
                  callbacks: Sequence[UserCallback] = ()) -> TorchTrainer:
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=t.max_failures,
                                         controller_failure_limit=t.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        # Only the train split is sharded; rank 0 reads the held-out split whole. A fixed block order
        # makes a single worker's data order, and so a resumed run, reproducible.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )

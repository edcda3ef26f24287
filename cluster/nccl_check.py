"""All-reduce a gradient-sized tensor across the cluster's GPUs: which network NCCL uses, and its bus bandwidth.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
      --runtime-env-json '{"env_vars": {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET"}}' \
      -- python -m cluster.nccl_check --workers 16
    RAY_AUTH_MODE=token ray job logs --address http://127.0.0.1:8265 <submission_id> \
      | grep -iE "NET/OFI Selected provider is|NCCL INFO Using network|bus bandwidth"

Each Ray Train worker (one GPU; 16 = two p5 nodes) all-reduces a float32 tensor as large as one step's gradients
under `--config` (harness.costs.gradient_bytes: what DDP all-reduces per step); rank 0 logs the median time, the
algorithm bandwidth (bytes / time) and the bus bandwidth (x 2 (n - 1) / n, nccl-tests' convention: comparable with
the link rate). Over EFA, aws-ofi-nccl logs "NET/OFI Selected provider is efa, fabric is ..." (older releases:
"NET/OFI Selected Provider is efa (found N nics)") and NCCL "Using network ... Libfabric"; NCCL's fallback over TCP
logs "Using network Socket". `--cpu` runs the same with gloo on CPUs (a smoke run without GPUs).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

logger = logging.getLogger(__name__)


def all_reduce_loop(config: dict[str, Any]) -> None:
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from harness.costs import ring_allreduce_bytes

    device = ray.train.torch.get_device()
    world = dist.get_world_size()
    tensor = torch.ones(config["numel"], dtype=torch.float32, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(config["warmup"]):
        dist.all_reduce(tensor)
    sync()
    times = []
    for _ in range(config["iters"]):
        start = time.perf_counter()
        dist.all_reduce(tensor)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    nbytes = tensor.numel() * tensor.element_size()
    if dist.get_rank() == 0:  # Train V2 keeps reported metrics only with checkpoints: the result is logged instead
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logger.info("all-reduce of %.0f MB over %d workers (%s): median %.2f ms, algorithm bandwidth %.1f GB/s, "
                    "bus bandwidth %.1f GB/s", nbytes / 1e6, world, dist.get_backend(), seconds * 1e3,
                    nbytes / seconds / 1e9, ring_allreduce_bytes(nbytes, world) / seconds / 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16, help="GPUs (one worker each); 16 = two p5 nodes")
    parser.add_argument("--config", default="studies/configs/cluster.yaml", help="the model whose gradients to size")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--storage-path", default="/mnt/pnr/outputs/nccl_check", help="Ray Train's storage")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPUs, a 1/100 tensor: a smoke run")
    args = parser.parse_args(argv)  # before the heavy imports: --help and usage errors answer at once
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from harness.config import load_config
    from harness.costs import gradient_bytes
    from harness.launch import build_collective_trainer

    numel = gradient_bytes(load_config(args.config)) // 4
    if args.cpu:
        numel //= 100
    trainer = build_collective_trainer(all_reduce_loop, {"numel": numel, "iters": args.iters, "warmup": args.warmup},
                                       num_workers=args.workers, use_gpu=not args.cpu, name="nccl_check",
                                       storage_path=args.storage_path)
    trainer.fit()  # raises if a worker failed; the result line is in rank 0's output above
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

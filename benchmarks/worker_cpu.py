"""The training process's CPU time per step: masks drawn in the training loop (the design before commit 110d222)
against masks drawn by the data pipeline (now: the loop only unpacks a masked row and steps).

    python -m benchmarks.worker_cpu [--config studies/configs/small.yaml] [--batches 8] [--steps 4] [--threads 2]

For each objective (mlm, hybrid passes 2), on real packed Wikipedia rows, in this process and interleaved:
  masks in the loop   objectives.masking.mask_batch of one batch, seeded as the loop seeded it (what a worker did
                      per batch before the masks moved into Ray Data's map tasks)
  unpack              harness.stream.unpack of one row produced by the masking stage (harness.stream.mask_rows),
                      then harness.stream.to_device to the CPU (what a worker does per batch now)
  step                one training step (benchmarks.step_mfu's Runner: harness.step.train_step)
CPU time is time.process_time (all threads of this process), so a busy machine inflates it less than wall time.
Reported: medians per batch, and the process's CPU seconds per step before (step + masks) and after (step + unpack).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks.step_mfu import Runner, masked_batches, real_rows
from harness.config import load_config
from harness.stream import MaskingStage, derived_seed, mask_rows, to_device, unpack
from objectives import mask_plan
from objectives.masking import mask_batch

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}


def cpu_seconds(fn, *args) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def unpack_to_cpu(row: dict[str, torch.Tensor]) -> None:
    to_device(unpack(row)[0], torch.device("cpu"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--batches", type=int, default=8, help="batches whose masks are timed, per objective")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per objective")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = {name: load_config(args.config, overrides) for name, overrides in VARIANTS.items()}
    base = next(iter(configs.values()))
    ids, specials = real_rows(base, args.batches * base.optim.batch_size)
    batch_size = base.optim.batch_size
    print(f"{args.config}: batch {batch_size} x {base.data.seq_len}, {args.threads} threads, "
          f"{args.batches} batches, {args.steps} steps per objective")
    print("| objective | masks in the loop ms CPU | unpack ms CPU | step s CPU | CPU s per step before | "
          "CPU s per step after | after / before |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg in configs.items():
        stage = MaskingStage(cfg.masking, mask_plan(cfg), specials, batch_size, cfg.seed)
        rows = mask_rows({"input_ids": ids.numpy()}, stage, epoch=0)
        runner = Runner(name, cfg, masked_batches(cfg, ids, specials))
        runner.step()  # warm-up
        in_loop, unpacked, steps = [], [], []
        for i in range(max(args.batches, args.steps)):  # interleaved: a mask draw, an unpack, a step
            if i < args.batches:
                tokens = ids[i * batch_size:(i + 1) * batch_size]
                generator = torch.Generator().manual_seed(derived_seed(cfg.seed, 0, i))
                in_loop.append(cpu_seconds(mask_batch, tokens, torch.ones_like(tokens), stage.plan, stage.masking,
                                           stage.specials, generator))
                row = {k: torch.as_tensor(np.asarray(v[i:i + 1])) for k, v in rows.items()}
                unpacked.append(cpu_seconds(unpack_to_cpu, row))
            if i < args.steps:
                steps.append(cpu_seconds(runner.step))
        masks, unpack_s, step = (statistics.median(v) for v in (in_loop, unpacked, steps))
        before, after = step + masks, step + unpack_s
        print(f"| {name} | {masks * 1e3:.2f} | {unpack_s * 1e3:.3f} | {step:.3f} | {before:.3f} | {after:.3f} | "
              f"{after / before:.4f} |", flush=True)


if __name__ == "__main__":
    main()

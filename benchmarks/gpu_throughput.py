"""GPU training-step throughput of base.yaml: tokens/s and MFU against the bf16 dense peak (989 TFLOP/s on H100).

    python -m benchmarks.gpu_throughput [--config studies/configs/base.yaml] [--steps 20] [--rounds 3] [--compile]

The step is the Ray loop's (harness.pretrain.train_step): masks drawn on the CPU per batch, pinned memory and
non-blocking copies, bf16 autocast, TF32 matmuls, SDPA (flash kernels on GPU), the MLM head on masked positions
only, fused AdamW, metrics left on the device (one sync per timed block). mlm and hybrid (passes 1 and 2) are
interleaved over rounds; medians are reported. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch

from benchmarks.step_mfu import real_batch
from harness.config import load_config
from harness.perf import peak_flops
from harness.pretrain import build_optimizer, train_step
from objectives import PretrainModule, mask_plan
from objectives.flops import train_flops_per_step
from objectives.masking import mask_batch

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/base.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the training module")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_throughput needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    base = load_config(args.config, args.overrides)
    ids, specials = real_batch(base)
    peak, source = peak_flops(base.train.peak_flops, device, (1, 1, 1))
    runs = {}
    for name, overrides in VARIANTS.items():
        cfg = load_config(args.config, [*args.overrides, *overrides])
        torch.manual_seed(0)
        module = PretrainModule(cfg).to(device).train()
        step_fn = torch.compile(module, dynamic=True) if args.compile else module
        runs[name] = (cfg, module, step_fn, build_optimizer(module, cfg))

    def run_steps(name: str, steps: int) -> float:
        cfg, module, step_fn, optimizer = runs[name]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            generator = torch.Generator().manual_seed(i)
            batch = mask_batch(ids, torch.ones_like(ids), mask_plan(cfg), cfg.masking, specials, generator)
            batch = batch.pin_memory().to(device, non_blocking=True)
            train_step(step_fn, module, optimizer, batch, cfg.optim.grad_clip, momentum=0.999, diagnostics=False)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / steps

    for name in runs:
        run_steps(name, 3)  # warm-up (and compilation)
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for name in runs:
            times[name].append(run_steps(name, args.steps))
    tokens = base.optim.batch_size * base.data.seq_len
    print(f"{torch.cuda.get_device_name(device)}; peak {peak / 1e12:.0f} TFLOP/s ({source}); "
          f"batch {base.optim.batch_size} x {base.data.seq_len}; compile={args.compile}")
    print("| variant | step ms | tokens/s | TFLOP/step | TFLOP/s | MFU | step vs mlm |")
    print("|---|---|---|---|---|---|---|")
    ref = statistics.median(times["mlm"])
    for name, (cfg, *_rest) in runs.items():
        t, flops = statistics.median(times[name]), train_flops_per_step(cfg)
        print(f"| {name} | {t * 1e3:.1f} | {tokens / t:.0f} | {flops / 1e12:.2f} | {flops / t / 1e12:.1f} | "
              f"{flops / t / peak:.2f} | {t / ref:.2f} |")


if __name__ == "__main__":
    main()

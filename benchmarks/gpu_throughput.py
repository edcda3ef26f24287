"""GPU training-step throughput of base.yaml: tokens/s and MFU against the bf16 dense peak (989 TFLOP/s on H100).

    python -m benchmarks.gpu_throughput [--config studies/configs/base.yaml] [--steps 20] [--rounds 3] [--no-compile]

The step is the Ray loop's: harness.step.train_step (bf16 autocast, the MLM head on masked positions only, fused
AdamW, the EMA update, metrics left on the device) on batches whose masks were drawn beforehand on the CPU as the
data pipeline draws them (harness.stream's masking stage), each moved to the GPU by the training loop's own
boundary (harness.stream.to_device: pinned, copied without blocking). TF32 matmuls, SDPA's GPU kernels. The
forward is compiled like the training loop's (harness.step.compile_forward, on by default for CUDA;
--no-compile: eager), compiled during the untimed warm-up. mlm and hybrid (passes 1 and 2) are interleaved over
rounds, each round timed with CUDA events around `steps` steps (one sync per timed block); medians are reported.
Needs a CUDA device (and neither Ray nor MLflow): without one it stops after checking its arguments and configs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from benchmarks.step_mfu import masked_batches, real_rows
from harness.config import load_config
from harness.perf import peak_flops
from harness.step import build_optimizer, compile_enabled, compile_forward, ffn_gemm_shape, train_step
from harness.stream import to_device
from models import momentum_at
from objectives import PretrainModule, train_flops_per_step

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/base.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compilation happens here)")
    parser.add_argument("--batches", type=int, default=4, help="distinct masked batches each variant cycles through")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the forward (default: train.compile, which is on for CUDA)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.batch_size=128")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configs = {name: load_config(args.config, [*args.overrides, *VARIANTS[name]]) for name in args.variants}
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_throughput needs a CUDA device (arguments and configs are valid)")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    base = next(iter(configs.values()))
    ids, specials = real_rows(base, args.batches * base.optim.batch_size)
    peak, source = peak_flops(base.train.peak_flops, device, ffn_gemm_shape(base))
    runs = {}
    for name, cfg in configs.items():
        if args.compile is not None:
            cfg = load_config(args.config, [*args.overrides, *VARIANTS[name], f"train.compile={args.compile}"])
        torch.manual_seed(0)
        module = PretrainModule(cfg).to(device).train()
        compiled = compile_enabled(cfg, device)
        forward = compile_forward(module) if compiled else module
        batches = masked_batches(cfg, ids, specials)  # on the CPU, as the data pipeline delivers them
        runs[name] = (cfg, module, forward, build_optimizer(module, cfg), batches, compiled)

    def run_steps(name: str, steps: int, first: int) -> float:
        cfg, module, forward, optimizer, batches, _ = runs[name]
        o = cfg.optim
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(first, first + steps):
            batch = to_device(batches[i % len(batches)], device)
            momentum = momentum_at(i, o.max_steps, cfg.objective.ema_start, cfg.objective.ema_end)
            train_step(forward, module, optimizer, batch, o.grad_clip, momentum, diagnostics=False)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / steps

    for name in runs:
        start = time.perf_counter()
        run_steps(name, args.warmup, 0)
        print(f"{name}: warm-up ({args.warmup} steps, compile={runs[name][5]}) {time.perf_counter() - start:.1f}s",
              flush=True)
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        for name in runs:
            times[name].append(run_steps(name, args.steps, args.warmup + r * args.steps))
    tokens = base.optim.batch_size * base.data.seq_len
    print(f"\n{torch.cuda.get_device_name(device)}; peak {peak / 1e12:.0f} TFLOP/s ({source}); batch "
          f"{base.optim.batch_size} x {base.data.seq_len}; {args.rounds} rounds of {args.steps} steps; "
          f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print("| variant | compiled | step ms | tokens/s | TFLOP/step | TFLOP/s | MFU | step vs mlm |")
    print("|---|---|---|---|---|---|---|---|")
    ref = statistics.median(times["mlm"]) if "mlm" in times else None
    for name, (cfg, *_rest, compiled) in runs.items():
        t, flops = statistics.median(times[name]), train_flops_per_step(cfg)
        vs = f"{t / ref:.2f}" if ref else "-"
        print(f"| {name} | {compiled} | {t * 1e3:.1f} | {tokens / t:.0f} | {flops / 1e12:.2f} | "
              f"{flops / t / 1e12:.1f} | {flops / t / peak:.2f} | {vs} |")


if __name__ == "__main__":
    main()

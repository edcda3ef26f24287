"""Throughput of real Ray Train pre-training runs: tokens/s, MFU, data-wait fraction, and the training worker
process's CPU time per step.

    python -m benchmarks.pretrain_throughput [--config studies/configs/small.yaml] [--steps 40] [--rounds 2]

Runs mlm, hybrid passes=1 and hybrid passes=2 interleaved over `rounds` (this machine is noisy), each a
real TorchTrainer run on the prepared Wikipedia shards, and reports per variant the median over rounds
of the per-run medians of the reported perf/* metrics, skipping the first log interval (warm-up).
MFU = achieved model FLOP/s (analytic FLOPs / step time) over the fp32 matmul FLOP/s at the model's FFN
GEMM shape, measured in this process after every run (interleaved with the runs, median reported).
CPU s/step = perf/process_cpu_s_per_step: the worker process's CPU time (all its threads: the step's torch threads,
Ray Data's iterator threads) per step; the masks are drawn in Ray Data's map tasks, outside that process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from harness import tracking
from harness.config import load_config
from harness.perf import measure_matmul_flops
from harness.pretrain import run_pretraining
from harness.step import ffn_gemm_shape, worker_threads

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}
METRICS = ("perf/tokens_per_s", "perf/model_flops_per_s", "perf/data_wait", "perf/step_time_s",
           "perf/process_cpu_s_per_step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    output = args.output_dir or tempfile.mkdtemp(prefix="bench_")
    common = [f"output_dir={output}", f"optim.max_steps={args.steps}", "optim.warmup_steps=5", "train.log_every=5",
              "train.eval_every=0", "train.checkpoint_every=0", *args.overrides]
    variants = {v: VARIANTS[v] for v in ["mlm", *[v for v in args.variants if v != "mlm"]]}  # ratios need mlm
    per_run: dict[str, dict[str, list[float]]] = {v: {m: [] for m in METRICS} for v in variants}
    peaks = []
    for round_ in range(args.rounds):
        for variant, overrides in variants.items():
            cfg = load_config(args.config, common + overrides)
            summary = run_pretraining(cfg, run_name=f"{variant}-r{round_}")
            torch.set_num_threads(worker_threads(cfg))
            peaks.append(measure_matmul_flops(*ffn_gemm_shape(cfg), device=torch.device("cpu")))
            for metric in METRICS:
                values = [v for _, v in tracking.metric_history(summary["tracking_uri"], summary["mlflow_run_id"],
                                                                metric)][1:]  # skip the warm-up interval
                per_run[variant][metric].append(statistics.median(values) if values else float("nan"))
    peak = statistics.median(peaks)
    print(f"\n{args.config}, {args.steps} steps, {args.rounds} interleaved rounds (median over rounds); "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s (median of {len(peaks)}, "
          f"range {min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f})")
    print("| variant | tokens/s | step s | step vs mlm | model GFLOP/s | MFU | data-wait | worker CPU s/step |")
    print("|---|---|---|---|---|---|---|---|")
    mlm_step = statistics.median(per_run["mlm"]["perf/step_time_s"])
    for variant, m in per_run.items():
        med = {k: statistics.median(v) for k, v in m.items()}
        print(f"| {variant} | {med['perf/tokens_per_s']:.0f} | {med['perf/step_time_s']:.3f} | "
              f"{med['perf/step_time_s'] / mlm_step:.2f} | {med['perf/model_flops_per_s'] / 1e9:.1f} | "
              f"{med['perf/model_flops_per_s'] / peak:.3f} | {100 * med['perf/data_wait']:.2f}% | "
              f"{med['perf/process_cpu_s_per_step']:.3f} |")
    print("\nper run (rounds in order):")
    for variant, m in per_run.items():
        print(f"  {variant}: " + "; ".join(f"{k.removeprefix('perf/')} " + ", ".join(f"{v:.4g}" for v in values)
                                         for k, values in m.items()))


if __name__ == "__main__":
    main()

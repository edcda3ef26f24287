"""Evaluate one Hugging Face encoder: GLUE linear probes + embedding geometry -> a tidy table.

    python -m eval.run --encoder PATH [--tokenizer PATH] [--tasks sst2 stsb ...]
        [--pooling mean cls ...] [--out DIR] [--max-train N] ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from eval.pooling import POOLINGS
from eval.report import write_run
from eval.suite import SuiteConfig, preflight, run_suite
from eval.tasks import TASKS

DEFAULT_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def add_suite_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by eval.run and eval.compare (which may evaluate encoders itself)."""
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder, when the encoder folder has none")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"tasks to run (default: all): {' '.join(TASKS)}")
    parser.add_argument("--pooling", nargs="+", default=list(POOLINGS), metavar="POOLING",
                        help=f"poolings (default: all): {' '.join(POOLINGS)}")
    parser.add_argument("--glue-dir", default=None,
                        help="local GLUE folder, or 'hub' for nyu-mll/glue (default: $GLUE_DIR, else "
                        f"{DEFAULT_GLUE} when it exists, else hub)")
    parser.add_argument("--max-train", type=int, default=None, help="seeded train subsample per task")
    parser.add_argument("--max-dev", type=int, default=None, help="seeded dev subsample (quick checks only)")
    parser.add_argument("--max-len", type=int, default=128, help="max tokens per sentence (default 128)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    parser.add_argument("--geometry-n", type=int, default=1000, help="dev sentences for geometry: min(n_dev, N)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--n-boot-spectral", type=int, default=50, help="resamples for spectrum metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep token states on disk here (keyed by encoder, task, split, max length)")


def config_from(args: argparse.Namespace) -> SuiteConfig:
    return SuiteConfig(
        tasks=tuple(args.tasks), poolings=tuple(args.pooling), max_len=args.max_len,
        batch_size=args.batch_size, max_train=args.max_train, max_dev=args.max_dev,
        geometry_n=args.geometry_n, n_boot=args.n_boot, n_boot_spectral=args.n_boot_spectral,
        seed=args.seed,
    )


def glue_dir_from(arg: str | None) -> Path | None:
    """None means the Hugging Face hub copy."""
    if arg is not None:
        return None if arg == "hub" else Path(arg)
    if os.environ.get("GLUE_DIR"):
        return Path(os.environ["GLUE_DIR"])
    return DEFAULT_GLUE if DEFAULT_GLUE.is_dir() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, required=True, help="Hugging Face encoder folder")
    parser.add_argument("--name", help="encoder label in the tables (default: folder name)")
    parser.add_argument("--group", help="group label, e.g. the recipe shared by several pretraining seeds")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/eval/NAME)")
    add_suite_args(parser)
    args = parser.parse_args(argv)
    cfg, glue_dir = config_from(args), glue_dir_from(args.glue_dir)
    try:
        preflight(args.encoder, args.tokenizer, glue_dir, cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    name = args.name or args.encoder.resolve().name
    print(f"[eval] {' '.join(['python -m eval.run', *(argv if argv is not None else sys.argv[1:])])}", flush=True)
    result = run_suite(args.encoder, args.tokenizer, glue_dir, cfg, name, args.group, args.cache_dir)
    write_run(result.results, result.replicates, result.spectra, args.out or Path("outputs/eval") / name)
    print("[eval] seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))


if __name__ == "__main__":
    main()

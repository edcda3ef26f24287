"""Evaluate one Hugging Face encoder: GLUE linear probes + embedding geometry -> a tidy table.

    python -m eval.run --encoder PATH [--tokenizer PATH] [--tasks sst2 stsb ...]
        [--pooling mean cls ...] [--out DIR] [--max-train N] [--protocol harness|reference] ...

--protocol reference replays the paper's reference code (eval.config.ReferenceSwitches, all on);
--switches-off NAME ... turns single quirks off to measure their effect.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from eval.config import GLUE_DIR, PROTOCOLS, SUITE_DEFAULTS, ReferenceSwitches, SuiteConfig
from eval.pooling import POOLINGS
from eval.report import write_run
from eval.suite import preflight, run_suite
from eval.tasks import TASKS

DEFAULT_GLUE = Path(os.path.normpath(Path(__file__).resolve().parents[1] / GLUE_DIR))
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"

logger = logging.getLogger(__name__)


def add_suite_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by eval.run and eval.compare (which may evaluate encoders itself); defaults: SuiteConfig's."""
    d = SUITE_DEFAULTS
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder, when the encoder folder has none")
    parser.add_argument("--tasks", nargs="+", default=list(d.tasks), metavar="TASK",
                        help=f"tasks to run, from {' '.join(TASKS)} (default: {' '.join(d.tasks)})")
    parser.add_argument("--pooling", nargs="+", default=list(d.poolings), metavar="POOLING",
                        help=f"poolings, from {' '.join(POOLINGS)} (default: {' '.join(d.poolings)})")
    parser.add_argument("--glue-dir", default=None,
                        help="local GLUE folder, or 'hub' for nyu-mll/glue (default: $GLUE_DIR, else "
                        f"{DEFAULT_GLUE} when it exists, else hub)")
    parser.add_argument("--max-train", type=int, default=d.max_train,
                        help=f"seeded train subsample per task (default: {_or_all(d.max_train)})")
    parser.add_argument("--max-dev", type=int, default=d.max_dev,
                        help=f"seeded dev subsample, for quick checks only (default: {_or_all(d.max_dev)})")
    parser.add_argument("--max-len", type=int, default=d.max_len,
                        help="max tokens per sentence (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="encoder batch size (default: %(default)s)")
    parser.add_argument("--geometry-n", type=int, default=d.geometry_n,
                        help="dev sentences for geometry: min(n_dev, N) (default: %(default)s)")
    parser.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--n-boot-spectral", type=int, default=d.n_boot_spectral,
                        help="resamples for spectrum metrics (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=d.protocol,
                        help="harness: this project's protocol; reference: the paper's code, quirk by quirk "
                        "(default: %(default)s)")
    parser.add_argument("--switches-off", nargs="+", default=[], metavar="SWITCH",
                        help="reference protocol: quirks to turn off, from " + " ".join(ReferenceSwitches.names()))
    parser.add_argument("--attention-draws", type=int, default=d.attention_draws,
                        help="reference protocol: random untrained attention poolers per width (default: %(default)s)")
    parser.add_argument("--reference-n", type=int, default=d.reference_n,
                        help="reference protocol: the first N dev rows analysed (default: %(default)s)")
    parser.add_argument("--reference-max-epochs", type=int, default=d.reference_max_epochs,
                        help="reference protocol: cap on the GLUE probes' logged epochs (default: as logged)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep token states on disk here (keyed by encoder, task, split, max length)")


def _or_all(n: int | None) -> str:
    return "all" if n is None else str(n)


def config_from(args: argparse.Namespace) -> SuiteConfig:
    return SuiteConfig(
        tasks=tuple(args.tasks), poolings=tuple(args.pooling), max_len=args.max_len,
        batch_size=args.batch_size, max_train=args.max_train, max_dev=args.max_dev,
        geometry_n=args.geometry_n, n_boot=args.n_boot, n_boot_spectral=args.n_boot_spectral,
        seed=args.seed, protocol=args.protocol, switches=ReferenceSwitches.off(*args.switches_off),
        attention_draws=args.attention_draws, reference_n=args.reference_n,
        reference_max_epochs=args.reference_max_epochs,
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
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: outputs/eval/NAME, outputs/eval/NAME-reference)")
    add_suite_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        cfg, glue_dir = config_from(args), glue_dir_from(args.glue_dir)
        preflight(args.encoder, args.tokenizer, glue_dir, cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    name = args.name or args.encoder.resolve().name
    logger.info("%s", " ".join(["python -m eval.run", *(argv if argv is not None else sys.argv[1:])]))
    result = run_suite(args.encoder, args.tokenizer, glue_dir, cfg, name, args.group, args.cache_dir)
    out = args.out or Path("outputs/eval") / (name if cfg.protocol == "harness" else f"{name}-{cfg.protocol}")
    write_run(result.results, result.replicates, result.spectra, out)
    print(f"{name}: {len(result.results)} values in {out}/results.csv; seconds per stage: "
          + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))


if __name__ == "__main__":
    main()

"""Evaluate one Hugging Face encoder: GLUE linear probes + embedding geometry -> a tidy table.

    python -m eval.run --encoder PATH [--tokenizer PATH] [--tasks sst2 stsb ...]
        [--pooling mean cls ...] [--out DIR] [--max-train N] [--protocol harness|reference] ...

--protocol reference replays the paper's reference code (eval.config.ReferenceSwitches, all on);
--switches-off NAME ... turns single quirks off to measure their effect. Options left out keep SuiteConfig's
defaults; --print-config prints the settings the options resolve to and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from eval.config import SuiteConfig

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
# The suite options' defaults are eval.config.SuiteConfig's: an option left out is not passed to it. This module
# imports the suite (torch, transformers) only once the command line is parsed, so that --help answers at once.
DEFAULTS_HELP = "(default: SuiteConfig's)"

logger = logging.getLogger(__name__)


def add_suite_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by eval.run and eval.compare (which may evaluate encoders itself); each left out keeps
    SuiteConfig's default (config_from), and names and values are checked by SuiteConfig and the preflight."""
    d = DEFAULTS_HELP
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder, when the encoder folder has none")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help=f"GLUE tasks to run, e.g. sst2 stsb {d}")
    parser.add_argument("--pooling", nargs="+", metavar="POOLING", help=f"poolings, e.g. mean cls attention {d}")
    parser.add_argument("--glue-dir", default=None,
                        help="local GLUE folder, or 'hub' for nyu-mll/glue (default: $GLUE_DIR, else the offline "
                        "copy eval.config.GLUE_DIR beside the repository when it exists, else hub)")
    parser.add_argument("--max-train", type=int, help=f"seeded train subsample per task {d}")
    parser.add_argument("--max-dev", type=int, help=f"seeded dev subsample, for quick checks only {d}")
    parser.add_argument("--max-len", type=int, help=f"max tokens per sentence {d}")
    parser.add_argument("--batch-size", type=int, help=f"encoder batch size {d}")
    parser.add_argument("--geometry-n", type=int, help=f"dev sentences for geometry: min(n_dev, N) {d}")
    parser.add_argument("--n-boot", type=int, help=f"bootstrap resamples {d}")
    parser.add_argument("--n-boot-spectral", type=int, help=f"resamples for spectrum metrics {d}")
    parser.add_argument("--seed", type=int, help=d)
    parser.add_argument("--protocol", help="harness: this project's protocol; reference: the paper's code, quirk by "
                        f"quirk {d}")
    parser.add_argument("--switches-off", nargs="+", default=[], metavar="SWITCH",
                        help="reference protocol: quirks to turn off (eval.config.ReferenceSwitches), e.g. "
                        "alignment_pow4 token_probe")
    parser.add_argument("--attention-draws", type=int,
                        help=f"reference protocol: random untrained attention poolers per width {d}")
    parser.add_argument("--reference-n", type=int, help=f"reference protocol: the first N dev rows analysed {d}")
    parser.add_argument("--reference-max-epochs", type=int,
                        help="reference protocol: cap on the GLUE probes' logged epochs (default: as logged)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep token states on disk here (keyed by encoder, task, split, max length)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the suite settings these options resolve to (SuiteConfig's defaults, then the "
                        "options given) as YAML and exit")


# Options named as the SuiteConfig field they set (--tasks and --pooling set the tuples `tasks` and `poolings`).
_SAME_NAME = ("max_len", "batch_size", "max_train", "max_dev", "geometry_n", "n_boot", "n_boot_spectral", "seed",
              "protocol", "attention_draws", "reference_n", "reference_max_epochs")


def config_from(args: argparse.Namespace) -> SuiteConfig:
    """The SuiteConfig of the parsed options: SuiteConfig's defaults, then every option given."""
    from eval.config import ReferenceSwitches, SuiteConfig

    given = {name: getattr(args, name) for name in _SAME_NAME if getattr(args, name) is not None}
    if args.tasks:
        given["tasks"] = tuple(args.tasks)
    if args.pooling:
        given["poolings"] = tuple(args.pooling)
    return SuiteConfig(**given, switches=ReferenceSwitches.off(*args.switches_off))


def suite_yaml(cfg: SuiteConfig) -> str:
    """--print-config: the settings as YAML, in field order."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)


def glue_dir_from(arg: str | None) -> Path | None:
    """None means the Hugging Face hub copy."""
    from eval.config import GLUE_DIR

    if arg is not None:
        return None if arg == "hub" else Path(arg)
    if os.environ.get("GLUE_DIR"):
        return Path(os.environ["GLUE_DIR"])
    default = Path(os.path.normpath(Path(__file__).resolve().parents[1] / GLUE_DIR))
    return default if default.is_dir() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", type=Path, metavar="PATH",
                        help="Hugging Face encoder folder (required, except with --print-config)")
    parser.add_argument("--name", help="encoder label in the tables (default: folder name)")
    parser.add_argument("--group", help="group label, e.g. the recipe shared by several pretraining seeds")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: outputs/eval/NAME, outputs/eval/NAME-reference)")
    add_suite_args(parser)
    args = parser.parse_args(argv)
    if args.encoder is None and not args.print_config:
        parser.error("the following arguments are required: --encoder")
    from eval.report import write_run  # here, after parsing: the suite loads torch and transformers
    from eval.suite import preflight, run_suite

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        cfg, glue_dir = config_from(args), glue_dir_from(args.glue_dir)
        cfg.validate()
        if args.print_config:
            print(suite_yaml(cfg), end="")
            return
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

"""Compare two or more encoders: within-pair tests over dev examples, seed aggregates and, between groups of
pre-training seeds, the seed-level test.

    python -m eval.compare A B ... [--out DIR]

Each input is an encoder folder (evaluated here with the suite options) or an eval.run output
(its folder or results table), optionally prefixed GROUP= to group pretraining seeds:
    python -m eval.compare jepa=runs/s0/export jepa=runs/s1/export mlm=runs/s2/export mlm=runs/s3/export

Outputs: paired_example_tests.csv (per encoder pair: a paired bootstrap over the dev examples, Holm-corrected; it
treats the encoders as fixed, so it is NOT a test between objectives), aggregate.csv (mean +- std over the encoders
of each group) and, for every two groups with at least two encoders each, seed_tests.csv (eval.stats.seed_tests:
Welch and exact permutation tests over the per-seed values, Holm-corrected: the test between objectives).
"""
# ruff: noqa: E402  (the suite's imports follow the command-line parse: --help answers before torch loads)

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eval.run import LOG_FORMAT, add_suite_args, config_from, glue_dir_from, suite_yaml


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="*", metavar="[GROUP=]PATH",
                        help="two or more encoder folders or eval.run outputs")
    parser.add_argument("--out", type=Path, default=Path("outputs/eval/compare"), help="output folder")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for Holm")
    add_suite_args(parser)
    return parser


if __name__ == "__main__":  # --help and usage errors answer here, before the imports below load torch
    build_parser().parse_args()

import pandas as pd

from eval.config import SuiteConfig
from eval.plots import plot_all
from eval.report import is_run, read_run, write_run, write_table
from eval.stats import aggregate_seeds, paired_example_tests, seed_tests
from eval.suite import preflight, run_suite

logger = logging.getLogger(__name__)


def parse_input(arg: str) -> tuple[str | None, Path]:
    group, sep, path = arg.partition("=")
    return (group, Path(path)) if sep and not Path(arg).exists() else (None, Path(arg))


def check_inputs(inputs: list[tuple[str | None, Path]], args: argparse.Namespace, cfg: SuiteConfig) -> None:
    if len(inputs) < 2:
        raise ValueError("give at least two encoders or eval.run outputs to compare")
    for _, path in inputs:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: give an encoder folder or an eval.run output")
        if not is_run(path):
            preflight(path, args.tokenizer, glue_dir_from(args.glue_dir), cfg)


def load_inputs(
    inputs: list[tuple[str | None, Path]], args: argparse.Namespace, cfg: SuiteConfig, out: Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Concatenated (results, replicates, spectra), encoders evaluated as needed, names made unique."""
    tables: list[tuple[pd.DataFrame, ...]] = []
    seen: set[str] = set()
    for group, path in inputs:
        if is_run(path):
            logger.info("reading %s", path)
            results, replicates, spectra = read_run(path)
            name = _unique(results["encoder"].iloc[0], seen)
            for df in (results, replicates, spectra):
                df["encoder"] = name
            if group is not None:
                results["group"] = group
        else:
            name = _unique(path.resolve().name, seen)
            res = run_suite(path, args.tokenizer, glue_dir_from(args.glue_dir), cfg, name, group, args.cache_dir)
            write_run(res.results, res.replicates, res.spectra, out / "runs" / name)
            results, replicates, spectra = res.results, res.replicates, res.spectra
        tables.append((results, replicates, spectra))
    return tuple(pd.concat(parts, ignore_index=True) for parts in zip(*tables, strict=True))


def _unique(name: str, seen: set[str]) -> str:
    unique, k = name, 2
    while unique in seen:
        unique, k = f"{name}-{k}", k + 1
    seen.add(unique)
    return unique


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    inputs = [parse_input(a) for a in args.inputs]
    try:
        cfg = config_from(args)
        cfg.validate()
        if args.print_config:
            print(suite_yaml(cfg), end="")
            return
        check_inputs(inputs, args, cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    results, replicates, spectra = load_inputs(inputs, args, cfg, args.out)
    tests = paired_example_tests(results, replicates, args.alpha)
    aggregate = aggregate_seeds(results)
    between = group_seed_tests(results, args.alpha)
    write_table(results, args.out, "results")
    write_table(tests, args.out, "paired_example_tests")
    write_table(aggregate, args.out, "aggregate")
    written = ["paired_example_tests.csv", "aggregate.csv"]
    if not between.empty:
        write_table(between, args.out, "seed_tests")
        written.append("seed_tests.csv")
    plot_all(results, spectra, args.out / "plots")
    _print_summary(tests, aggregate, between, args.alpha)
    print(f"wrote {args.out}/{', '.join(written)}, results.csv, plots/")


def group_seed_tests(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """eval.stats.seed_tests between every two groups that have at least two encoders (pre-training seeds) each."""
    groups = results.groupby("group")["encoder"].nunique()
    arms = [g for g in groups.index if groups[g] >= 2]
    tidy = results.rename(columns={"group": "arm", "encoder": "seed"})
    tidy = tidy if "protocol" in tidy.columns else tidy.assign(protocol="harness")
    parts = [seed_tests(tidy[["arm", "seed", "task", "pooling", "metric", "protocol", "family", "value"]], a, b, alpha)
             for i, a in enumerate(arms) for b in arms[i + 1 :]]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _print_summary(tests: pd.DataFrame, aggregate: pd.DataFrame, between: pd.DataFrame, alpha: float) -> None:
    fmt = {"index": False, "float_format": lambda v: f"{v:.4g}"}
    if tests.empty:
        print("no within-pair tests: the inputs share no task x pooling x metric on the same examples")
    else:
        sig = tests[tests["significant"]]
        print(f"{len(tests)} within-encoder-pair tests over dev examples (paired bootstrap; not a test between "
              f"objectives), {len(sig)} significant after Holm (alpha {alpha})")
        cols = ["encoder_a", "encoder_b", "task", "pooling", "metric", "value_a", "value_b", "diff", "p_holm"]
        if not sig.empty:
            print(sig[cols].to_string(**fmt))
    seeds = aggregate[aggregate["n_encoders"] > 1]
    if not seeds.empty:
        print("mean +- std over the encoders of each group:")
        print(seeds.to_string(**fmt))
    if not between.empty:
        sig = between[between["significant"]]
        print(f"{len(between)} seed-level tests between groups (Welch and exact permutation over per-seed values, "
              f"Holm on {between['holm_on'].iloc[0]}), {len(sig)} significant (alpha {alpha})")
        cols = ["arm_a", "arm_b", "task", "pooling", "metric", "protocol", "mean_a", "mean_b", "diff", "p_welch",
                "p_permutation", "p_holm"]
        if not sig.empty:
            print(sig[cols].to_string(**fmt))


if __name__ == "__main__":
    main()

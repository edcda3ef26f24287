"""Compare two or more encoders: paired bootstrap tests with Holm correction, and seed aggregates.

    python -m eval.compare A B ... [--out DIR]

Each input is an encoder folder (evaluated here with the suite options) or an eval.run output
(its folder or results table), optionally prefixed GROUP= to group pretraining seeds:
    python -m eval.compare jepa=runs/s0/export jepa=runs/s1/export mlm=runs/s2/export
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from eval.config import SuiteConfig
from eval.plots import plot_all
from eval.report import is_run, read_run, write_run, write_table
from eval.run import LOG_FORMAT, add_suite_args, config_from, glue_dir_from
from eval.stats import aggregate_seeds, compare
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
    parser = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="[GROUP=]PATH", help="encoder folders or eval.run outputs")
    parser.add_argument("--out", type=Path, default=Path("outputs/eval/compare"), help="output folder")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for Holm")
    add_suite_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    inputs = [parse_input(a) for a in args.inputs]
    cfg = config_from(args)
    try:
        check_inputs(inputs, args, cfg)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    results, replicates, spectra = load_inputs(inputs, args, cfg, args.out)
    tests = compare(results, replicates, args.alpha)
    aggregate = aggregate_seeds(results)
    write_table(results, args.out, "results")
    write_table(tests, args.out, "comparison")
    write_table(aggregate, args.out, "aggregate")
    plot_all(results, spectra, args.out / "plots")
    _print_summary(tests, aggregate, args.alpha)
    print(f"wrote {args.out}/comparison.csv, aggregate.csv, results.csv, plots/")


def _print_summary(tests: pd.DataFrame, aggregate: pd.DataFrame, alpha: float) -> None:
    if tests.empty:
        print("no paired tests: the inputs share no task x pooling x metric on the same examples")
        return
    sig = tests[tests["significant"]]
    print(f"{len(tests)} paired tests, {len(sig)} significant after Holm (alpha {alpha})")
    cols = ["encoder_a", "encoder_b", "task", "pooling", "metric", "value_a", "value_b", "diff", "p_holm"]
    if not sig.empty:
        print(sig[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    seeds = aggregate[aggregate["n_encoders"] > 1]
    if not seeds.empty:
        print("mean +- std over the encoders of each group:")
        print(seeds.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

"""MLM vs hybrid vs JEPA: K seeds each, compute-matched (same model-FLOPs budget; or step-matched), the full
evaluation suite for every run, seed-level tests between objectives, eval.compare's paired tests and seed aggregates.

    python studies/compare_objectives.py --config studies/configs/small.yaml [--spec FILE] [--smoke] \
        [dotted.config=value ...] [spec.seeds='[0, 1, 2, 3, 4]'] [spec.match=steps]

Re-running the same command resumes an interrupted study (same study.name and settings).
"""
# ruff: noqa: E402  (the imports follow the sys.path line)

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, or from a job's working dir

from harness.cli import print_config, study_arguments

DEFAULT_SPEC = "studies/spaces/compare_objectives.yaml"
if __name__ == "__main__":  # --help and usage errors answer here, before torch and Ray load (seconds)
    study_arguments(__doc__, "--spec", DEFAULT_SPEC, None)

import pandas as pd

from eval.report import read_run, write_table
from eval.stats import aggregate_seeds, paired_example_tests, seed_tests
from harness.config import Config, ConfigError, load_config
from harness.space import load_spec, matched_steps
from harness.study import open_study, run_script
from harness.study_report import StudyResult, display_table, markdown_table
from harness.trial import TrialSpec

SMOKE = ["study.name=compare_objectives_smoke", "study.max_concurrent=2", "optim.max_steps=20",
         "train.eval_every=10", "train.log_every=5", "train.cpus_per_worker=0.4", "eval.quick_train=200",
         "eval.quick_dev=200", "eval.tasks=[sst2, stsb]", "eval.poolings=[mean, attention]", "eval.max_train=300",
         "eval.max_dev=300", "eval.n_boot=50", "eval.geometry_n=200"]
SMOKE_SPEC = ["objectives=[mlm, hybrid]", "seeds=[0]"]


def trial_grid(cfg: Config, spec: dict[str, Any]) -> tuple[list[TrialSpec], pd.DataFrame]:
    """One trial per (objective, seed); steps from the FLOPs budget (match: flops) or equal (match: steps)."""
    if spec.get("match") not in ("flops", "steps") or not spec.get("objectives") or not spec.get("seeds"):
        raise ConfigError(f"spec: needs objectives: [...], seeds: [...] and match: flops|steps, got {spec}")
    arms = {objective: {"objective.name": objective} for objective in spec["objectives"]}
    budgets = matched_steps(cfg, arms, spec["match"], spec.get("reference", "hybrid"))
    grid = [TrialSpec(f"{b['arm']}-s{seed}", {"objective.name": b["arm"], "seed": seed, "optim.max_steps": b["steps"],
                                               "optim.warmup_steps": b["warmup"]}, group=b["arm"])
            for b in budgets for seed in spec["seeds"]]
    table = pd.DataFrame(budgets).rename(columns={"arm": "objective"}).drop(columns=["warmup"])
    return grid, table


def paired_tests(result: StudyResult) -> list[tuple[str, str]]:
    """Seed-level tests between objectives (eval.stats.seed_tests: Welch and permutation over pre-training seeds,
    Holm), eval.compare's paired example tests (within each encoder pair, over dev examples) and seed aggregates
    over the finished runs, written to report/; the report's sections on them (none with < two finished runs)."""
    done = result.table[result.table["outcome"] == "finished"]
    tables = [read_run(result.study_dir / "trials" / label / "eval") for label in done["label"]]
    if len(tables) < 2:
        return []
    results, replicates = (pd.concat(t, ignore_index=True) for t in list(zip(*tables, strict=True))[:2])
    tests, aggregate = paired_example_tests(results, replicates), aggregate_seeds(results)
    seeds = dict(zip(done["label"], done["trial.seed"], strict=True))
    per_seed = results.assign(arm=results["group"], seed=results["encoder"].map(seeds))
    arms = list(dict.fromkeys(per_seed["arm"]))
    between = [seed_tests(per_seed, a, b) for i, a in enumerate(arms) for b in arms[i + 1:]]
    between = pd.concat(between, ignore_index=True) if between else pd.DataFrame()
    out = result.study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_table(tests, out, "comparison")
    write_table(between, out, "seed_tests")
    write_table(aggregate, out, "aggregate")
    n_sig = int(tests["significant"].sum()) if not tests.empty else 0
    n_seed = int(between["significant"].sum()) if not between.empty else 0
    main_rows = aggregate[(aggregate["family"] == "probe") | (aggregate["metric"] == "uniformity")]
    return [("Seed aggregates (mean, std over seeds)", markdown_table(main_rows)),
            ("Seed-level tests between objectives", f"{len(between)} tests over pre-training seeds (Welch's t and "
             f"the exact permutation test, Holm on the Welch p), {n_seed} significant: see seed_tests.csv."),
            ("Paired tests", f"{len(tests)} paired bootstrap tests over dev examples within each encoder pair (not a "
                             f"test between objectives), {n_sig} significant after Holm (alpha 0.05): see "
                             "comparison.csv.")]


def main(argv: list[str] | None = None) -> int:
    return run_script("compare_objectives", run, study_arguments(__doc__, "--spec", DEFAULT_SPEC, argv))


def run(args: argparse.Namespace) -> int:
    # 1. The base config (no early stopping: every run must reach its budget) and the trial grid.
    defaults = ["study.name=compare_objectives", "study.scheduler=none"]
    cfg = load_config(args.config, defaults + (SMOKE if args.smoke else []) + args.config_overrides)
    if args.print_config:
        return print_config(cfg)
    spec = load_spec(args.spec, (SMOKE_SPEC if args.smoke else []) + args.spec_overrides)
    grid, budgets = trial_grid(cfg, spec)
    print(f"[compare_objectives] {len(grid)} runs:\n{budgets.to_string(index=False)}", flush=True)

    # 2. Run (or resume) the study; 3. paired tests between objectives, then the report.
    with open_study(cfg, grid=grid) as study:
        result = study.run()
        report = study.report(result, [("Budgets", markdown_table(budgets)), *paired_tests(result)])
    print(display_table(result.table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"[compare_objectives] report {report / 'report.md'}; MLflow parent run {result.parent_run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

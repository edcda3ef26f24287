"""MLM vs hybrid vs JEPA: K seeds each, compute-matched (same model-FLOPs budget; or step-matched), the full
evaluation suite for every run, and eval.compare's paired tests (Holm-corrected) and seed aggregates.

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

import pandas as pd

from eval.report import read_run, write_table
from eval.stats import aggregate_seeds, compare
from harness.config import Config, ConfigError, load_config
from harness.space import apply_params, load_spec
from harness.study import open_study, run_script, study_arguments
from harness.study_report import StudyResult, markdown_table
from harness.trial import TrialSpec
from objectives import train_flops_per_step

DEFAULT_SPEC = "studies/spaces/compare_objectives.yaml"
SMOKE = ["study.name=compare_objectives_smoke", "study.max_concurrent=2", "optim.max_steps=20",
         "train.eval_every=10", "train.log_every=5", "train.cpus_per_worker=0.4", "eval.quick_train=200",
         "eval.quick_dev=200", "eval.tasks=[sst2, stsb]", "eval.poolings=[mean, attention]", "eval.max_train=300",
         "eval.max_dev=300", "eval.n_boot=50", "eval.geometry_n=200"]
SMOKE_SPEC = ["objectives=[mlm, hybrid]", "seeds=[0]"]


def trial_grid(cfg: Config, spec: dict[str, Any]) -> tuple[list[TrialSpec], pd.DataFrame]:
    """One trial per (objective, seed); steps from the FLOPs budget (match: flops) or equal (match: steps)."""
    if spec.get("match") not in ("flops", "steps") or not spec.get("objectives") or not spec.get("seeds"):
        raise ConfigError(f"spec: needs objectives: [...], seeds: [...] and match: flops|steps, got {spec}")
    steps, warmup = cfg.optim.max_steps, cfg.optim.warmup_steps
    budget = steps * train_flops_per_step(apply_params(cfg, {"objective.name": spec.get("reference", "hybrid")}))
    grid, budgets = [], []
    for objective in spec["objectives"]:
        flops = train_flops_per_step(apply_params(cfg, {"objective.name": objective}))
        n = steps if spec["match"] == "steps" else max(1, round(budget / flops))
        budgets.append({"objective": objective, "steps": n, "GFLOP/step": flops / 1e9, "total PFLOP": n * flops / 1e15})
        for seed in spec["seeds"]:
            overrides = {"objective.name": objective, "seed": seed, "optim.max_steps": n,
                         "optim.warmup_steps": min(n, round(warmup * n / steps))}
            grid.append(TrialSpec(f"{objective}-s{seed}", overrides, group=objective))
    return grid, pd.DataFrame(budgets)


def paired_tests(result: StudyResult) -> list[tuple[str, str]]:
    """eval.compare's paired tests and seed aggregates over the finished runs, written to report/; the
    report's sections on them (none with fewer than two finished runs)."""
    done = result.table[result.table["outcome"] == "finished"]
    tables = [read_run(result.study_dir / "trials" / label / "eval") for label in done["label"]]
    if len(tables) < 2:
        return []
    results, replicates = (pd.concat(t, ignore_index=True) for t in list(zip(*tables, strict=True))[:2])
    tests, aggregate = compare(results, replicates), aggregate_seeds(results)
    out = result.study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_table(tests, out, "comparison")
    write_table(aggregate, out, "aggregate")
    n_sig = int(tests["significant"].sum()) if not tests.empty else 0
    main_rows = aggregate[(aggregate["family"] == "probe") | (aggregate["metric"] == "uniformity")]
    return [("Seed aggregates (mean, std over seeds)", markdown_table(main_rows)),
            ("Paired tests", f"{len(tests)} paired bootstrap tests between objectives, {n_sig} significant after "
                             "Holm (alpha 0.05): see comparison.csv.")]


def main(argv: list[str] | None = None) -> int:
    return run_script("compare_objectives", run, study_arguments(__doc__, "--spec", DEFAULT_SPEC, argv))


def run(args: argparse.Namespace) -> int:
    # 1. The base config (no early stopping: every run must reach its budget) and the trial grid.
    defaults = ["study.name=compare_objectives", "study.scheduler=none"]
    cfg = load_config(args.config, defaults + (SMOKE if args.smoke else []) + args.config_overrides)
    spec = load_spec(args.spec, (SMOKE_SPEC if args.smoke else []) + args.spec_overrides)
    grid, budgets = trial_grid(cfg, spec)
    print(f"[compare_objectives] {len(grid)} runs:\n{budgets.to_string(index=False)}", flush=True)

    # 2. Run (or resume) the study; 3. paired tests between objectives, then the report.
    with open_study(cfg, grid=grid) as study:
        result = study.run()
        report = study.report(result, [("Budgets", markdown_table(budgets)), *paired_tests(result)])
    print(result.table.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"[compare_objectives] report {report / 'report.md'}; MLflow parent run {result.parent_run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The paper's claims, tested: MLM vs the paper's hybrid (λ learned from 0.5, two passes, cosine distance) vs the
same hybrid with λ fixed at 0.5 (the control for the learned λ's drift), K pre-training seeds each, step-matched
(the paper's comparison) or compute-matched; every encoder evaluated under the harness's protocol and the paper's
reference protocol; then the claims report: one row per claim of studies/paper/claims.yaml with the paper's value,
ours under each protocol, seed-level tests between the arms (Holm-corrected) and a verdict
(report/paper_claims.{html,md,csv}, logged to the study's MLflow parent run).

    python studies/paper_claims.py --config studies/configs/claims_cpu.yaml [--spec FILE] [--smoke] \\
        [dotted.config=value ...] [spec.seeds='[0, 1, 2, 3, 4]'] [spec.match=flops] \\
        [spec.arms.jepa='{objective: {name: jepa}}'] [spec.arms.hybrid_fixed=null]

Re-running the same command resumes an interrupted study (same study.name and settings).
"""
# ruff: noqa: E402  (the imports follow the sys.path line)

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, or from a job's working dir

from harness.cli import print_config, study_arguments

DEFAULT_SPEC = "studies/spaces/paper_claims.yaml"
if __name__ == "__main__":  # --help and usage errors answer here, before torch and Ray load (seconds)
    study_arguments(__doc__, "--spec", DEFAULT_SPEC, None)

import pandas as pd

from harness.claims import claims_report
from harness.config import Config, ConfigError, load_config
from harness.space import load_spec, matched_steps
from harness.study import open_study, run_script
from harness.study_report import display_table, markdown_table
from harness.tracking import flatten
from harness.trial import TrialSpec

# --smoke: two arms x two seeds of the tiny model, a minimal evaluation (use with studies/configs/tiny.yaml).
SMOKE = ["study.name=paper_claims_smoke", "study.max_concurrent=2", "optim.max_steps=20", "train.eval_every=10",
         "train.log_every=5", "train.cpus_per_worker=0.4", "eval.quick_train=200", "eval.quick_dev=200",
         "eval.tasks=[sst2, stsb]", "eval.poolings=[mean, max]", "eval.max_train=200", "eval.max_dev=200",
         "eval.n_boot=20", "eval.geometry_n=100"]
SMOKE_SPEC = ["arms.hybrid_fixed=null", "seeds=[0, 1]"]


def trial_grid(cfg: Config, spec: dict[str, Any]) -> tuple[list[TrialSpec], pd.DataFrame]:
    """One trial per (arm, seed), labelled <arm>-s<seed>; steps equal (match: steps) or from the reference arm's
    model-FLOPs budget (match: flops)."""
    arms, seeds = spec.get("arms"), spec.get("seeds")
    if not isinstance(arms, dict) or not arms or not seeds or not spec.get("protocols"):
        raise ConfigError(f"spec: needs arms: {{name: config changes}}, seeds: [...], match: steps|flops and "
                          f"protocols: [...], got {spec}")
    changes = {arm: flatten(tree or {}) for arm, tree in arms.items()}
    budgets = matched_steps(cfg, changes, spec.get("match"), spec.get("reference", "hybrid"))
    grid = [TrialSpec(f"{b['arm']}-s{seed}", {**changes[b["arm"]], "seed": seed, "optim.max_steps": b["steps"],
                                               "optim.warmup_steps": b["warmup"]}, group=b["arm"])
            for seed in seeds for b in budgets]  # seed-major: an interrupted study has every arm's first seeds
    return grid, pd.DataFrame(budgets)


def main(argv: list[str] | None = None) -> int:
    return run_script("paper_claims", run, study_arguments(__doc__, "--spec", DEFAULT_SPEC, argv))


def run(args: argparse.Namespace) -> int:
    # 1. The base config (no early stopping: every run reaches its budget), the spec and the trial grid.
    defaults = ["study.name=paper_claims", "study.scheduler=none"]
    cfg = load_config(args.config, defaults + (SMOKE if args.smoke else []) + args.config_overrides)
    if args.print_config:
        return print_config(cfg)
    spec = load_spec(args.spec, (SMOKE_SPEC if args.smoke else []) + args.spec_overrides)
    grid, budgets = trial_grid(cfg, spec)
    print(f"[paper_claims] {len(grid)} runs, protocols {spec['protocols']}:\n{budgets.to_string(index=False)}",
          flush=True)

    # 2. Run (or resume) the study; 3. the claims report, then the study's report (both logged to the parent run).
    with open_study(cfg, grid=grid, protocols=spec["protocols"]) as study:
        result = study.run()
        sections = claims_report(result, cfg.study.name, spec, budgets)
        report = study.report(result, [("Budgets", markdown_table(budgets)), *sections])
    print(display_table(result.table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"[paper_claims] claims {report / 'paper_claims.html'}; report {report / 'report.md'}; "
          f"MLflow parent run {result.parent_run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

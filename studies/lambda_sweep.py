"""λ sweep of the hybrid objective: Optuna (TPE, seeded) proposes, ASHA stops on the quick probe,
finished trials get the full GLUE probe + geometry suite; the best config lands in the MLflow parent run.

    python studies/lambda_sweep.py --config studies/configs/small.yaml [--space FILE] [--smoke] \
        [dotted.config=value ...] [space.objective.passes='{choice: [2]}' ...]
    ray job submit --working-dir . -- python studies/lambda_sweep.py --config ... output_dir=/shared/outputs

Trials are ranked on held-out TRAIN data (study.metric, default select/mean_score), never on GLUE dev.
Multi-objective (held-out-train probe score and validation MLM loss, a Pareto front):
    study.metric='[select/mean_score, val/loss_mlm]' study.mode='[max, min]'

Re-running the same command resumes an interrupted study (same study.name and settings).
"""
# ruff: noqa: E402  (the imports follow the sys.path line)

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, or from a job's working dir

from harness.cli import print_config, study_arguments

DEFAULT_SPACE = "studies/spaces/lambda_sweep.yaml"
if __name__ == "__main__":  # --help and usage errors answer here, before torch and Ray load (seconds)
    study_arguments(__doc__, "--space", DEFAULT_SPACE, None)

from harness.config import load_config
from harness.space import load_space
from harness.study import open_study, run_script
from harness.study_report import display_table

# --smoke: a few tiny trials, minutes on a laptop (use with studies/configs/tiny.yaml).
SMOKE = ["study.name=lambda_sweep_smoke", "study.num_samples=2", "study.max_concurrent=2", "study.grace_period=10",
         "optim.max_steps=20", "train.eval_every=5", "train.log_every=5", "train.cpus_per_worker=0.4",
         "eval.quick_train=200", "eval.quick_dev=200", "eval.tasks=[sst2, stsb]", "eval.poolings=[mean, attention]",
         "eval.max_train=300", "eval.max_dev=300", "eval.n_boot=50", "eval.geometry_n=200"]


def main(argv: list[str] | None = None) -> int:
    return run_script("lambda_sweep", run, study_arguments(__doc__, "--space", DEFAULT_SPACE, argv))


def run(args: argparse.Namespace) -> int:
    # 1. The base config: the file, the smoke setting, then the command line.
    defaults = ["study.name=lambda_sweep", "objective.name=hybrid"]
    cfg = load_config(args.config, defaults + (SMOKE if args.smoke else []) + args.config_overrides)
    if args.print_config:
        return print_config(cfg)

    # 2. The search space: the YAML, then space.* overrides.
    space = load_space(args.spec, args.spec_overrides)
    print(f"[lambda_sweep] {cfg.study.num_samples} trials over {', '.join(space)}", flush=True)

    # 3. Run (or resume) the study and write its report.
    with open_study(cfg, space=space) as study:
        result = study.run()
        report = study.report(result)
    print(display_table(result.table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"[lambda_sweep] report {report / 'report.md'}; MLflow parent run {result.parent_run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

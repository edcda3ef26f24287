"""Scaling: model sizes x token budgets for mlm and hybrid; power-law fits of the validation MLM loss and
of the probe error (1 - probe/mean_score) against training compute C (model FLOPs), with plots.

    python studies/scaling.py --config studies/configs/small.yaml [--spec FILE] [--smoke] \
        [dotted.config=value ...] [spec.token_budgets='[1.0e+6, 1.0e+7]']

Fit per objective: y = a * C^b by least squares in log-log space (b < 0: y falls with compute).
Re-running the same command resumes an interrupted study (same study.name and settings).
"""
# ruff: noqa: E402  (the imports follow the sys.path line)

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, or from a job's working dir

from harness.cli import print_config, study_arguments

DEFAULT_SPEC = "studies/spaces/scaling.yaml"
if __name__ == "__main__":  # --help and usage errors answer here, before torch and Ray load (seconds)
    study_arguments(__doc__, "--spec", DEFAULT_SPEC, None)

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.config import Config, ConfigError, load_config
from harness.space import apply_params, load_spec
from harness.study import open_study, run_script
from harness.study_report import markdown_table
from harness.trial import TrialSpec
from objectives import train_flops_per_step

SMOKE = ["study.name=scaling_smoke", "study.max_concurrent=2", "train.eval_every=10", "train.log_every=5",
         "train.cpus_per_worker=0.4", "eval.quick_train=200", "eval.quick_dev=200", "eval.tasks=[sst2, stsb]",
         "eval.poolings=[mean]", "eval.max_train=300", "eval.max_dev=300", "eval.n_boot=50", "eval.geometry_n=200"]
SMOKE_SPEC = ["sizes={d32: {model.hidden_size: 32, model.num_layers: 1, model.num_heads: 2, "
              "model.intermediate_size: 64}}", "token_budgets=[5120, 10240]"]
FITTED = {"val/loss_mlm": "validation MLM loss", "probe_error": "probe error (1 - probe/mean_score)"}


def trial_grid(cfg: Config, spec: dict[str, Any]) -> tuple[list[TrialSpec], dict[str, float]]:
    """One trial per (objective, size, budget) and its training compute in FLOPs."""
    if not spec.get("objectives") or not spec.get("sizes") or not spec.get("token_budgets"):
        raise ConfigError(f"spec: needs objectives: [...], sizes: {{name: {{overrides}}}} and token_budgets: [...], "
                          f"got {spec}")
    tokens_per_step = cfg.optim.batch_size * cfg.data.seq_len * cfg.train.num_workers
    warmup_fraction = cfg.optim.warmup_steps / cfg.optim.max_steps
    grid, compute = [], {}
    for objective in spec["objectives"]:
        for size, overrides in spec["sizes"].items():
            for budget in spec["token_budgets"]:
                steps = max(1, round(float(budget) / tokens_per_step))
                trial = {**overrides, "objective.name": objective, "optim.max_steps": steps,
                         "optim.warmup_steps": round(warmup_fraction * steps)}
                label = f"{objective}-{size}-{steps}steps"
                grid.append(TrialSpec(label, trial, group=objective))
                compute[label] = steps * cfg.train.num_workers * train_flops_per_step(apply_params(cfg, trial))
    return grid, compute


def fit_power_laws(table: pd.DataFrame) -> pd.DataFrame:
    """y = a * C^b per objective and fitted quantity, with R^2 in log space."""
    rows = []
    for (objective, quantity), part in table.melt(["group", "compute"], list(FITTED)).groupby(["group", "variable"]):
        part = part[(part["value"] > 0) & np.isfinite(part["value"])]
        if part["compute"].nunique() < 2:
            continue
        x, y = np.log(part["compute"].to_numpy(float)), np.log(part["value"].to_numpy(float))
        b, log_a = np.polyfit(x, y, 1)
        r2 = 1 - ((y - (log_a + b * x)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
        rows.append({"objective": objective, "quantity": quantity, "a": np.exp(log_a), "b": b, "r2": r2,
                     "points": len(part)})
    return pd.DataFrame(rows)


def plot_fits(table: pd.DataFrame, fits: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(10, 4))
    for i, (quantity, label) in enumerate(FITTED.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        for objective, part in table.groupby("group"):
            points = ax.loglog(part["compute"], part[quantity], "o", label=objective)[0]
            fit = fits[(fits["objective"] == objective) & (fits["quantity"] == quantity)]
            if not fit.empty:
                c = np.geomspace(part["compute"].min(), part["compute"].max(), 50)
                a, b = fit.iloc[0][["a", "b"]]
                ax.loglog(c, a * c**b, "-", color=points.get_color(), label=f"{objective}: C^{b:.3f}")
        ax.set(xlabel="training compute C (model FLOPs)", ylabel=label)
        ax.legend(fontsize=8)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    return run_script("scaling", run, study_arguments(__doc__, "--spec", DEFAULT_SPEC, argv))


def run(args: argparse.Namespace) -> int:
    # 1. The base config (no early stopping: every run must spend its budget) and the grid.
    defaults = ["study.name=scaling", "study.scheduler=none"]
    cfg = load_config(args.config, defaults + (SMOKE if args.smoke else []) + args.config_overrides)
    if args.print_config:
        return print_config(cfg)
    spec = load_spec(args.spec, (SMOKE_SPEC if args.smoke else []) + args.spec_overrides)
    grid, compute = trial_grid(cfg, spec)
    print(f"[scaling] {len(grid)} runs: {', '.join(t.label for t in grid)}", flush=True)

    # 2. Run (or resume) the study; 3. fit and plot the power laws; write the report.
    with open_study(cfg, grid=grid) as study:
        result = study.run()
        table = result.table[result.table["outcome"] == "finished"].copy()
        table["compute"] = table["label"].map(compute)
        table["probe_error"] = 1 - table["probe/mean_score"]
        fits = fit_power_laws(table)
        out = result.study_dir / "report" / "plots"
        out.mkdir(parents=True, exist_ok=True)
        plot_fits(table, fits, out / "scaling.png")
        fits.to_csv(result.study_dir / "report" / "power_laws.csv", index=False)
        body = (markdown_table(fits) if not fits.empty else "Fewer than two compute values finished per objective.")
        report = study.report(result, [("Power laws y = a * C^b", body + "\n\n![scaling](plots/scaling.png)")])
    print(fits.to_string(index=False, float_format=lambda v: f"{v:.4g}") if not fits.empty else "no fits")
    print(f"[scaling] report {report / 'report.md'}; MLflow parent run {result.parent_run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

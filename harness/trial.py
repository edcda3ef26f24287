"""One trial of a study: a Tune function trainable that pre-trains, evaluates and reports.

A trial is one pre-training run (harness.pretrain.train, a TorchTrainer inside the trial) under a child
MLflow run of the study's parent run. It reports the quick probe at every eval step (what ASHA stops on);
a trial that reaches its last step gets the full evaluation suite in a Ray task, logs the suite's metrics
and tables to its run, and its final report carries the study's metric(s) (`check_metrics` says which).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from eval.quick import QuickTask
from eval.report import write_run
from eval.suite import SuiteConfig, headline_metrics, result_metrics, run_suite
from harness import tracking
from harness.config import Config, ConfigError
from harness.launch import QUICK_METRIC
from harness.pretrain import PreparedRun, train
from harness.space import apply_params


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a grid study: dotted overrides, a label (its folder and run name) and a group
    (e.g. the recipe that several seeds share, for eval.compare)."""

    label: str
    overrides: dict[str, Any]
    group: str | None = None


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study receives (through the object store)."""

    cfg: Config
    prepared: PreparedRun
    quick: list[QuickTask]
    suite: SuiteConfig
    glue_dir: Path | None
    study_dir: Path
    parent_run_id: str


class TrialDiverged(RuntimeError):
    """The trial's loss became NaN/inf; its child run is marked diverged and the study goes on."""


class ForwardEvalReports(TuneReportCallback):
    """Forwards to Tune only the reports of eval steps (they carry the quick probe, ASHA's metric);
    every report reaches MLflow anyway (tracking.ReportToMLflow)."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        if QUICK_METRIC in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def check_metrics(cfg: Config) -> None:
    """The optimised metric(s) must be something a finished trial reports."""
    for metric in cfg.study.metric:
        parts = metric.split("/")
        headline = metric in ("probe/mean_score", "geom/mean_uniformity") or (
            parts[:2] == ["probe", "mean_score"] and len(parts) == 3 and parts[2] in cfg.eval.poolings)
        per_task = len(parts) == 4 and parts[0] in ("probe", "geom") and parts[1] in cfg.eval.tasks \
            and parts[2] in cfg.eval.poolings
        if not (metric.startswith(("train/", "val/")) or headline or per_task):
            raise ConfigError(f"study.metric={metric!r}: a finished trial reports probe/mean_score, "
                              "probe/mean_score/<pooling>, geom/mean_uniformity, probe|geom/<task>/<pooling>/<metric> "
                              f"for eval.tasks={list(cfg.eval.tasks)} x eval.poolings={list(cfg.eval.poolings)}, "
                              "and val/... or train/... metrics")


def _evaluate(encoder: Path, glue_dir: Path | None, suite: SuiteConfig, out_dir: Path, name: str,
              group: str) -> pd.DataFrame:
    result = run_suite(encoder, glue_dir=glue_dir, cfg=suite, name=name, group=group)
    write_run(result.results, result.replicates, result.spectra, out_dir)
    return result.results


def run_trial(params: dict[str, Any], context: StudyContext) -> None:
    """Tune function trainable: pre-train (TorchTrainer inside), evaluate, report the final metrics.
    `params` is Optuna's draw ({dotted key: value}) or a grid's {"trial": TrialSpec fields}."""
    start = time.time()
    trial_id = tune.get_context().get_trial_id()
    spec = TrialSpec(**params["trial"]) if "trial" in params else TrialSpec(trial_id, params, trial_id)
    cfg = apply_params(context.cfg, spec.overrides)
    uri, experiment, name = context.prepared.tracking_uri, cfg.tracking.experiment, cfg.study.name
    trial_dir = context.study_dir / "trials" / spec.label
    tags = {tracking.TRIAL_TAG: trial_id, "study": name, "label": spec.label, "group": spec.group or spec.label}
    # A resumed study finds the child run of an unfinished trial by its Tune trial id and reopens it.
    existing = tracking.find_run(uri, experiment, {"mlflow.parentRunId": context.parent_run_id,
                                                   tracking.TRIAL_TAG: trial_id})
    with tracking.training_run(uri, experiment, f"{name}-{spec.label}", cfg.to_dict(), context.parent_run_id,
                               tags, run_id=existing) as run:
        tracking.log_params({f"trial.{k}": v for k, v in spec.overrides.items()})
        summary = train(cfg, context.prepared, run, f"trial-{spec.label}", trial_dir, context.study_dir / "train",
                        [ForwardEvalReports()], context.quick)
        if summary["outcome"] != "finished":
            raise TrialDiverged(f"trial {spec.label}: {summary['note']}")
        trained = time.time()
        # "DEFAULT": not inside the trial's placement group (Tune captures child tasks into it by default)
        options = {"num_cpus": cfg.eval.cpus, "num_gpus": 1 if cfg.train.use_gpu else 0,
                   "scheduling_strategy": "DEFAULT"}
        results = ray.get(ray.remote(_evaluate).options(**options).remote(
            Path(summary["encoder"]), context.glue_dir, context.suite, trial_dir / "eval", spec.label,
            spec.group or spec.label))
        # The evaluation ran in its own task, outside this run: its metrics and tables are logged here.
        final = {**result_metrics(results), **headline_metrics(results)}
        tracking.log_metrics(final)
        tracking.log_artifact(trial_dir / "eval", "eval")
        recorded = tracking.read_run(uri, run.run_id)["metrics"]
        wall = {"perf/trial_wall_s": time.time() - start, "perf/trial_train_wall_s": trained - start}
        tracking.log_metrics(wall)
        tune.report({**{k: v for k, v in recorded.items() if k.startswith(("train/", "val/", "probe/quick"))},
                     **final, **wall, "step": summary["steps"], "perf/train_time_s": recorded["perf/train_time_s"]})

"""One trial of a study: a Tune function trainable that pre-trains, evaluates and reports.

A trial is one pre-training run (harness.pretrain.train, a TorchTrainer inside the trial) under a child
MLflow run of the study's parent run. It reports the quick probe at every eval step (what ASHA stops on, never
at the last step: harness.launch.LastStepASHA); a trial that reaches its last step gets the full evaluation suite
in a Ray task (harness.evaluation, under each of the study's evaluation protocols), logs the suite's metrics and
tables to its run, and its final report carries the study's metric(s) (`check_metrics` says which).

Selection never reads GLUE dev. Everything that ranks trials (ASHA, Optuna, the best config, the Pareto front)
reads `select/*` metrics (probes scored on held-out TRAIN data) or the pre-training's own `train/*` and `val/*`;
dev scores (`probe/*`), dev geometry (`geom/*`) and the reference protocol's rows (`ref/*`) are the final,
untouched numbers of finished trials: logged to MLflow, never reported to Tune.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
from ray import tune

from harness import tracking
from harness.config import Config, ConfigError
from harness.evaluation import eval_folder, evaluate_suites
from harness.launch import SELECTION_PREFIXES, check_selection
from harness.pretrain import PreparedRun, train
from harness.space import apply_params
from harness.train_callbacks import LAST_STEP, QUICK_METRIC

if TYPE_CHECKING:
    from eval.config import SuiteConfig
    from eval.quick import QuickTask


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
    suites: tuple[SuiteConfig, ...]  # one per evaluation protocol, the harness's first
    glue_dir: Path | None
    study_dir: Path
    parent_run_id: str


class TrialDiverged(RuntimeError):
    """The trial's loss became NaN/inf; its child run is marked diverged and the study goes on."""


def check_metrics(cfg: Config) -> None:
    """The optimised metric(s) must be selection metrics (never GLUE dev) that a finished trial reports."""
    check_selection(cfg.study.metric)
    quick = {QUICK_METRIC, *(f"select/quick/{t}" for t in cfg.eval.quick_tasks)}
    for metric in cfg.study.metric:
        parts = metric.split("/")
        headline = metric == "select/mean_score" or metric in quick or (
            parts[:2] == ["select", "mean_score"] and len(parts) == 3 and parts[2] in cfg.eval.poolings)
        per_task = len(parts) == 4 and parts[1] in cfg.eval.tasks and parts[2] in cfg.eval.poolings
        if parts[0] == "select" and not (headline or per_task):
            raise ConfigError(f"study.metric={metric!r}: a finished trial reports select/mean_score, "
                              "select/mean_score/<pooling>, select/quick_score, select/quick/<quick task> and "
                              f"select/<task>/<pooling>/<metric> for eval.tasks={list(cfg.eval.tasks)} x "
                              f"eval.poolings={list(cfg.eval.poolings)}")


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
        setup_s = time.time() - start
        summary = train(cfg, context.prepared, run, f"trial-{spec.label}", trial_dir, context.study_dir / "train",
                        report_to_tune=True, quick_tasks=context.quick)
        if summary["outcome"] != "finished":
            raise TrialDiverged(f"trial {spec.label}: {summary['note']}")
        trained = time.time()
        args = (Path(summary["encoder"]), context.glue_dir, context.suites, trial_dir, spec.label,
                spec.group or spec.label)
        if cfg.train.in_process:
            # The trial's process holds the worker's CPUs (and GPU) until it returns: a task asking for them would
            # wait forever on a machine they fill. It evaluates here, and its next trial finds the suite imported.
            final, eval_walls = evaluate_suites(*args)
        else:
            # "DEFAULT": not inside the trial's placement group (Tune captures child tasks into it by default). On a
            # GPU the task's process ends with it (max_calls=1, which .options() does not take), its CUDA context and
            # cached memory too; on CPU an idle process waits for the next trial's evaluation with its imports done.
            evaluation = ray.remote(max_calls=1 if cfg.train.use_gpu else 0)(evaluate_suites)
            options = {"num_cpus": cfg.eval.cpus, "num_gpus": 1 if cfg.train.use_gpu else 0,
                       "scheduling_strategy": "DEFAULT"}
            final, eval_walls = ray.get(evaluation.options(**options).remote(*args))
        evaluated = time.time()
        # The evaluation ran outside this run (in its own task, or in the suite's code): its metrics and tables are
        # logged here.
        tracking.log_metrics(final)
        for suite in context.suites:
            folder = eval_folder(suite.protocol)
            tracking.log_artifact(trial_dir / folder, folder)
        recorded = tracking.read_run(uri, run.run_id)["metrics"]
        wall = {"perf/trial_wall_s": time.time() - start, "perf/trial_train_wall_s": trained - start, **eval_walls,
                "perf/trial_setup_s": setup_s, "perf/eval_task_s": evaluated - trained,
                "perf/trial_log_s": time.time() - evaluated}
        tracking.log_metrics(wall)
        # Tune (ASHA, Optuna) sees the selection metrics only: dev scores stay in MLflow, the final record.
        selection = {k: v for k, v in {**recorded, **final}.items() if k.startswith(SELECTION_PREFIXES)}
        tune.report({**selection, **wall, "step": summary["steps"], "perf/train_time_s": recorded["perf/train_time_s"],
                     LAST_STEP: 1.0})

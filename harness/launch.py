"""The only module that builds Ray trainers and tuners: scaling, failure, storage, search, scheduling.

Resources: each Train worker asks for `train.cpus_per_worker` CPUs (+1 GPU with train.use_gpu).
On a 2-CPU machine keep workers fractional (e.g. 2 x 0.5) so Ray Data's readers can still be
scheduled; a pipeline that cannot get a CPU hangs. On GPU nodes give each worker its GPU and one or
two CPUs, and leave the node's other CPUs to Ray Data. An in-process trial (train.in_process) builds no trainer: its
own process runs the loop and holds the worker's resources (check_trial_placement, _trial_resources).

On a local cluster (node address 127.0.0.1) the workers' process group stays on loopback (harness.loopback).
Train's controller unpickles the process group's config (harness.loopback) and the callbacks (harness.train_callbacks)
before it starts the workers; neither imports torch, Optuna or MLflow, so the controller starts without them.

ASHA never stops a trial at its last step (LastStepASHA): a trial that trained all its steps is always evaluated.
Without early stopping (study.scheduler=none) a trial's process serves the next trial (Tune's reuse_actors): it has
imported the trial's stack already (BENCHMARKS.md "Tune overhead per trial": Tune's cost per trial 12.6 -> 6.3 s
on the 2-core development machine). Not under ASHA: a trial that ASHA stops is still waiting on its TorchTrainer,
and Tune fails the next trial when the process it hands over is not free within 2 s.
Tune's console table shows each trial's step, λ, quick score and training loss (progress_reporter).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
import ray.data
import ray.train
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from ray.tune import CLIReporter
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from harness.config import Config, ConfigError, TrainConfig
from harness.loopback import LoopbackTorchConfig
from harness.train_callbacks import LAST_STEP, QUICK_METRIC

# Tune's console table: result key -> column header. Without them Tune shows a result's first keys (train/ctx_frac...).
PROGRESS_COLUMNS = {"step": "step", "train/lambda": "λ", QUICK_METRIC: "quick score", "train/loss": "loss"}
TUNE_DIR = "tune"  # Tune's experiment folder inside a study's folder
# What may rank trials: probes scored on held-out TRAIN data, and the pre-training's own metrics. GLUE dev (probe/*,
# geom/*, the reference protocol's ref/*) is the final score of a finished trial, never a selection metric.
SELECTION_PREFIXES = ("select/", "train/", "val/")


def check_selection(metrics: Sequence[str]) -> None:
    """Every metric that ranks trials (Optuna, ASHA, the best config, the Pareto front) is a selection metric."""
    for metric in metrics:
        if not metric.startswith(SELECTION_PREFIXES):
            raise ConfigError(f"study.metric={metric!r}: trials are selected on held-out TRAIN data (select/*) or on "
                              "the pre-training's train/* and val/* metrics, never on GLUE dev: probe/*, geom/* and "
                              "ref/* are the final scores of finished trials. Use e.g. select/mean_score.")


def build_trainer(cfg: Config, train_loop: Callable[[dict], None], loop_config: dict[str, Any],
                  datasets: dict[str, ray.data.Dataset], name: str, storage_path: Path,
                  callbacks: Sequence[UserCallback] = ()) -> TorchTrainer:
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=LoopbackTorchConfig(),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                                     placement_strategy=t.placement_strategy),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=t.max_failures,
                                         controller_failure_limit=t.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),  # Ray Train's own INFO lines: in its log files
        ),
        datasets=datasets,
        # The train stream is sharded (rank 0 reads the held-out batches itself, stream.held_out). A fixed block order
        # makes a single worker's data order, and so a resumed run, reproducible.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )


def build_collective_trainer(loop: Callable[[dict], None], loop_config: dict[str, Any], num_workers: int,
                             use_gpu: bool, name: str, storage_path: str) -> TorchTrainer:
    """A bare TorchTrainer for a check of the workers' collectives (cluster/nccl_check.py): no data, no checkpoints,
    the workers placed as a run of `num_workers` is (train.placement's default)."""
    placement = TrainConfig(num_workers=num_workers, use_gpu=use_gpu).placement_strategy
    return TorchTrainer(loop, train_loop_config=loop_config, torch_config=LoopbackTorchConfig(),
                        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                                     placement_strategy=placement),
                        run_config=RunConfig(name=name, storage_path=storage_path))


class LastStepASHA(AsyncHyperBandScheduler):
    """ASHA that never stops a trial at a report of its last step (marked LAST_STEP).

    ASHA's rungs lie at grace_period x reduction_factor^k. When one falls on optim.max_steps, plain ASHA decides
    on the last step's quick probe, and a trial stopped there has trained all its steps but never gets its full
    evaluation. A smaller max_t does not avoid that in general: a trial may first reach a lower rung at its last
    report. So the last step is never a decision point; the trial's final result is still recorded in its rung
    (on_trial_complete) for later trials to be compared against."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(LAST_STEP):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch that learns from a trial's final result only.

    A trial's intermediate results carry the quick probe (ASHA's metric), not the optimised metric,
    which only the full evaluation at the end produces; so they are not Optuna intermediate values.
    A trial stopped early ends without the metric and is told PRUNED, a failed one FAIL."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return


def _allow_partial_results() -> None:
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # read by Tune's controller in this process


def _use_progress_reporter() -> None:
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's newer console output ignores RunConfig.progress_reporter


def progress_reporter(cfg: Config, grid: bool) -> CLIReporter:
    """Tune's console table, every 30 s: one row per trial with its label (a grid's) or searched values, and
    PROGRESS_COLUMNS; a single-objective study also names its best trial so far."""
    single = len(cfg.study.metric) == 1
    return CLIReporter(metric_columns=dict(PROGRESS_COLUMNS),
                       parameter_columns={"trial/label": "trial"} if grid else None,
                       metric=cfg.study.metric[0] if single else None, mode=cfg.study.mode[0] if single else None,
                       max_report_frequency=30, print_intermediate_tables=True)


def check_trial_placement(t: TrainConfig, cluster_resources: dict[str, float]) -> None:
    """In-process trials train in the trial's own process, which a cluster made from cluster.yaml keeps on its head
    node (custom resource "head"): refused there, before the study starts."""
    if t.in_process and "head" in cluster_resources:
        raise ConfigError("train.in_process=True: a study's trials run in processes on the cluster's head node (where "
                          "MLflow listens), so in-process trials would train there, without GPUs; set "
                          "train.in_process=false to train on Ray Train workers")


def _trial_resources(t: TrainConfig) -> tune.PlacementGroupFactory:
    """A trial's own process is light (it waits on its TorchTrainer), unless it runs the loop itself (train.in_process):
    then it holds the worker's CPUs and GPU. On a cluster made from cluster.yaml it is pinned to the head (custom
    resource "head"), where the MLflow server listens."""
    own = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})} if t.in_process else {"CPU": 0.01}
    bundle = {**own, **({"head": 0.01} if "head" in ray.cluster_resources() else {})}
    return tune.PlacementGroupFactory([bundle])


def build_tuner(cfg: Config, trainable: Callable, study_dir: Path, callbacks: Sequence[tune.Callback],
                search_space: dict[str, optuna.distributions.BaseDistribution] | None = None,
                grid: list[Any] | None = None) -> tune.Tuner:
    """A Tuner over `search_space` (Optuna TPE, seeded by cfg.seed) or over the explicit `grid` of trials.

    Intermediate results lack the optimised metric (see FinalResultOptunaSearch), so Tune's strict
    check that every result carries every metric is switched off for this driver process."""
    s = cfg.study
    check_selection([*s.metric, QUICK_METRIC])
    _allow_partial_results()
    _use_progress_reporter()
    if (search_space is None) == (grid is None):
        raise ValueError("give exactly one of search_space (Optuna) or grid (explicit trials)")
    metric, mode = (list(s.metric), list(s.mode)) if len(s.metric) > 1 else (s.metric[0], s.mode[0])
    if search_space is not None:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed)
        search_alg, param_space, num_samples = (
            FinalResultOptunaSearch(search_space, metric=metric, mode=mode, sampler=sampler), None, s.num_samples)
    else:
        search_alg, param_space, num_samples = None, {"trial": tune.grid_search(grid)}, 1
    if s.scheduler == "asha":
        scheduler = LastStepASHA(
            time_attr="step", metric=QUICK_METRIC, mode="max", max_t=cfg.optim.max_steps,
            grace_period=s.grace_period or 2 * max(cfg.train.eval_every, 1), reduction_factor=s.reduction_factor,
            stop_last_trials=False)  # reaching max_t is no reason to stop: the trial goes on to its evaluation
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        tune.with_resources(trainable, _trial_resources(cfg.train)),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=s.max_concurrent, reuse_actors=s.scheduler != "asha"),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(study_dir), callbacks=list(callbacks),
                                  failure_config=tune.FailureConfig(max_failures=s.trial_failures),
                                  progress_reporter=progress_reporter(cfg, grid is not None), verbose=1),
    )


def restore_tuner(cfg: Config, study_dir: Path, trainable: Callable) -> tune.Tuner | None:
    """The Tuner of an interrupted study (finished trials are kept, unfinished ones re-run), or None."""
    path = study_dir / TUNE_DIR
    if not tune.Tuner.can_restore(str(path)):
        return None
    _allow_partial_results()
    _use_progress_reporter()  # the reporter is restored with the Tuner
    return tune.Tuner.restore(str(path), tune.with_resources(trainable, _trial_resources(cfg.train)),
                              resume_unfinished=True, resume_errored=False, restart_errored=False)

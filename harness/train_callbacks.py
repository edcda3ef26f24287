"""The callbacks that Ray Train's controller runs after each report: to MLflow, and (in a study) on to Tune; and
InProcessRun, which does the same for a loop in the calling process (train.in_process).

A module of its own, light to import: the controller unpickles its callbacks before it starts the workers, so what
this module imports is paid at every run's start. It imports no torch (harness.launch does, through TorchTrainer),
no Optuna and no MLflow (imported at the first report instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray.train
from ray.train import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

QUICK_METRIC = "select/quick_score"  # held-out TRAIN, reported at every eval step; what ASHA stops on
LAST_STEP = "last_step"  # 1.0 in a trial's reports of its last step (and its final report): ASHA never stops there


def mark_last_step(result: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """A trial's training report for Tune, with LAST_STEP: 1.0 at the trial's last step (its optim.max_steps)."""
    return {**result, LAST_STEP: float(result.get("step", 0) >= max_steps)}


class ReportToMLflow(UserCallback):
    """Logs rank 0's reports (every log step) to one MLflow run, from the Train controller (harness.tracking.
    log_report), which imports MLflow (a second or more) at the first report rather than before the workers start."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        from harness import tracking

        tracking.log_report(self.uri, self.run_id, metrics[0])


class ForwardEvalReports(TuneReportCallback):
    """Forwards to Tune only the reports of eval steps (they carry the quick probe, ASHA's metric), the last step's
    marked as such (ASHA never stops a trial there); every report reaches MLflow anyway (ReportToMLflow)."""

    def __init__(self, max_steps: int) -> None:
        super().__init__()
        self.max_steps = max_steps

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        if QUICK_METRIC in metrics[0]:
            super().after_report(run_context, [mark_last_step(metrics[0], self.max_steps)], checkpoint)


@dataclass(frozen=True)
class InProcessRun:
    """What Train's controller and its callbacks do, for a loop that runs in the calling process without Ray Train
    (train.in_process): where the run keeps its checkpoints, and where each report goes (MLflow, and in a study's
    trial, as ForwardEvalReports does, Tune)."""

    storage: str  # the run's folder in Train's storage (harness.checkpoint.write_run_checkpoint)
    uri: str
    run_id: str
    tune_max_steps: int | None  # a study's trial: forward its eval steps to Tune; None: a run of harness.pretrain

    def log(self, metrics: dict[str, Any]) -> None:
        """To MLflow, before the step's checkpoint is written: a rerun continues from the last checkpoint, so its step
        must already be in the run's history however the run stops (Train's controller registers a checkpoint, then
        runs ReportToMLflow, within one call)."""
        from harness import tracking

        tracking.log_report(self.uri, self.run_id, metrics)

    def forward_to_tune(self, metrics: dict[str, Any]) -> None:
        """In a study's trial, after the step's checkpoint: a trial that Tune stops at this report keeps it."""
        if self.tune_max_steps is not None and QUICK_METRIC in metrics:
            from ray import tune

            tune.report(mark_last_step(metrics, self.tune_max_steps))  # blocks until Tune takes it, as a trial's report

"""How a study drives Tune (harness.launch.build_tuner), on real Ray Tune, ASHA and a real MLflow sqlite store.

ASHA's last rung on a trial's last step (grace_period x reduction_factor^k == optim.max_steps, as in the lambda
sweep's --smoke: 10 x 2 == 20): a trial that trained all its steps is always evaluated and finished, never
stopped there; trials are still stopped at the earlier rungs. First with a scripted trainable (fast, exact
scores), then a real tiny study (slow). The console table shows each trial's λ, quick score and loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ray import cloudpickle, tune

from harness import tracking
from harness.config import load_config
from harness.launch import build_tuner
from harness.study import open_study
from harness.train_callbacks import LAST_STEP, QUICK_METRIC, mark_last_step
from harness.trial import TrialSpec
from studies import lambda_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "studies" / "configs" / "tiny.yaml"
EXPERIMENT = "last-step-test"
# The lambda sweep's --smoke schedule: eval (and a Tune report) every 5 steps, ASHA's rungs at 10 and 20 == max_steps.
SMOKE_SCHEDULE = ["optim.max_steps=20", "train.eval_every=5", "study.grace_period=10", "study.reduction_factor=2"]


def scripted_trial(params: dict, uri: str, parent: str) -> None:
    """Reports a scripted quick-probe curve as a real trial does (every eval step, the last one marked), then
    'evaluates' (logs the final metric, tags its run finished) and makes its final report."""
    spec = params["trial"]
    trial_id = tune.get_context().get_trial_id()
    with tracking.training_run(uri, EXPERIMENT, spec["label"], {"label": spec["label"]}, parent,
                               {tracking.TRIAL_TAG: trial_id, "label": spec["label"]}) as run:
        for step, score in spec["overrides"]["curve"].items():
            metrics = {"train/ctx_frac": 0.7, "train/lambda": 0.25, "train/loss": 4.5 - step / 10}
            tune.report(mark_last_step({**metrics, "step": int(step), QUICK_METRIC: score}, 20))
        tracking.log_metrics({"select/mean_score": 0.5})
        run.set_outcome("finished", "20 steps")
        tune.report({"step": 20, "select/mean_score": 0.5, QUICK_METRIC: score, LAST_STEP: 1.0})


@pytest.mark.usefixtures("ray_session")
def test_a_trial_below_the_cutoff_at_its_last_step_is_still_evaluated(tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture) -> None:
    """`b` passes rung 10 and is below `a` at rung 20, its last step: plain ASHA stops it there, before its
    evaluation. It must finish; `c`, below the cutoff at rung 10, is still stopped early."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    uri = tracking.default_uri(tmp_path)
    cfg = load_config(TINY, [*SMOKE_SCHEDULE, "study.max_concurrent=1", f"output_dir={tmp_path}"])
    curves = {"a": {5: 0.5, 10: 0.5, 15: 0.5, 20: 0.9}, "b": {5: 0.6, 10: 0.6, 15: 0.6, 20: 0.6},
              "c": {5: 0.1, 10: 0.1, 15: 0.1, 20: 0.1}}
    grid = [{"label": label, "overrides": {"curve": curve}, "group": None} for label, curve in curves.items()]
    with tracking.training_run(uri, EXPERIMENT, "study", {"kind": "last-step"}) as parent:
        closer = tracking.CloseStoppedTrials(uri, EXPERIMENT, parent.run_id, QUICK_METRIC)
        trainable = tune.with_parameters(scripted_trial, uri=uri, parent=parent.run_id)
        results = build_tuner(cfg, trainable, tmp_path / "study", [closer], grid=grid).fit()
    assert len(results) == 3 and not results.errors
    runs = {r["tags"]["label"]: r for r in tracking.child_runs(uri, parent.run_id)}
    for label in ("a", "b"):
        assert runs[label]["status"] == "FINISHED" and runs[label]["tags"]["outcome"] == "finished", runs[label]
        assert runs[label]["metrics"]["select/mean_score"] == 0.5
    assert runs["c"]["status"] == "KILLED" and runs["c"]["tags"]["outcome"] == "stopped_early"
    assert runs["c"]["tags"]["outcome_note"].startswith("stopped by the scheduler after step 10")
    finals = {r.config["trial"]["label"]: r.metrics for r in results}
    assert finals["b"]["select/mean_score"] == 0.5 and finals["b"]["step"] == 20

    # Tune's console table (its last one, printed when the study ends): the label, step, λ, quick score and loss.
    table = capfd.readouterr().out.split("== Status ==")[-1]
    header = next(line for line in table.splitlines() if "Trial name" in line)
    assert [c.strip() for c in header.strip("|").split("|")][-5:] == ["trial", "step", "λ", "quick score", "loss"]
    assert "ctx_frac" not in table
    row = next(line for line in table.splitlines() if "TERMINATED" in line and "| c " in line)
    assert [c.strip() for c in row.strip("|").split("|")][-5:] == ["c", "10", "0.25", "0.1", "3.5"]


def _history(uri: str, run: dict, key: str) -> dict[int, float]:
    return dict(tracking.metric_history(uri, run["run_id"], key))


@pytest.mark.slow
def test_real_tiny_study_evaluates_every_trial_that_reached_its_last_step(ray_session, tmp_path: Path) -> None:
    """The lambda sweep's --smoke schedule on a real study, one trial at a time. `b` (another seed) evaluates only
    at step 20, so ASHA first meets it at the last rung, on its last step, against `a`'s score there; with these
    seeds it is below (plain ASHA stopped it and it was never evaluated). Both must finish, with the encoder
    exported, the full evaluation and its metrics."""
    out = tmp_path / "out"
    cfg = load_config(TINY, [*lambda_sweep.SMOKE, *SMOKE_SCHEDULE, "study.name=last_rung", "study.max_concurrent=1",
                             f"output_dir={out}"])
    grid = [TrialSpec("a", {"seed": 0}), TrialSpec("b", {"seed": 1, "train.eval_every": 20})]
    with open_study(cfg, grid=grid) as study:
        result = study.run()
        report = study.report(result)
    uri = result.tracking_uri
    runs = {r["tags"]["label"]: r for r in tracking.child_runs(uri, result.parent_run_id)}
    assert set(runs) == {"a", "b"}
    quick = {label: _history(uri, run, QUICK_METRIC) for label, run in runs.items()}
    assert sorted(quick["a"]) == [5, 10, 15, 20] and sorted(quick["b"]) == [20]
    assert quick["b"][20] < quick["a"][20], "precondition: b is below a at the last rung (plain ASHA stops it)"
    for label, run in runs.items():
        assert max(_history(uri, run, "step")) == 20
        assert run["status"] == "FINISHED" and run["tags"]["outcome"] == "finished", (label, run["tags"])
        for key in ("select/mean_score", "probe/mean_score", "geom/mean_uniformity", "perf/trial_wall_s",
                    "perf/trial_setup_s", "perf/eval_task_s", "perf/trial_log_s", "perf/fit_wall_s"):
            assert key in run["metrics"], (label, key)
        trial_dir = study.context.study_dir / "trials" / label
        assert (trial_dir / "encoder" / "config.json").is_file() and (trial_dir / "eval" / "results.csv").is_file()
    table = result.table.set_index("label")
    assert list(table.loc[["a", "b"], "outcome"]) == ["finished", "finished"]
    assert (report / "best_config.yaml").is_file()
    # Tune's own record: both trials' final results carry the optimised metric.
    tune_dir = study.context.study_dir / "tune"
    finals = [json.loads(f.read_text().splitlines()[-1]) for f in tune_dir.rglob("result.json")]
    assert len(finals) == 2 and all("select/mean_score" in r for r in finals)


@pytest.mark.usefixtures("ray_session")
def test_in_process_trials_report_to_tune_and_mlflow_from_the_trial(tmp_path: Path) -> None:
    """train.in_process in a study: each trial runs its loop in its own Tune process (no Train controller, no Train
    worker). Its reports still reach MLflow at every log step and Tune at every eval step (the last one marked), its
    checkpoints land in the study's Train storage, and the finished trial is evaluated."""
    out = tmp_path / "out"
    cfg = load_config(TINY, [*lambda_sweep.SMOKE, "optim.max_steps=20", "train.eval_every=10", "study.scheduler=none",
                             "study.name=in_process", "study.max_concurrent=1", "train.in_process=true",
                             "eval.tasks=[sst2]", "eval.poolings=[mean]", f"output_dir={out}"])
    with open_study(cfg, grid=[TrialSpec("a", {"seed": 0}), TrialSpec("b", {"seed": 1})]) as study:
        result = study.run()
    uri = result.tracking_uri
    runs = {r["tags"]["label"]: r for r in tracking.child_runs(uri, result.parent_run_id)}
    assert set(runs) == {"a", "b"}
    tune_dir = study.context.study_dir / "tune"
    for label, run in runs.items():
        assert run["status"] == "FINISHED" and run["tags"]["outcome"] == "finished", (label, run["tags"])
        assert sorted(_history(uri, run, "train/loss")) == [5, 10, 15, 20]
        assert sorted(_history(uri, run, QUICK_METRIC)) == [10, 20]
        assert "select/mean_score" in run["metrics"] and "probe/mean_score" in run["metrics"]
        storage = study.context.study_dir / "train" / f"trial-{label}"
        assert [p.name for p in storage.glob("checkpoint_*")] == ["checkpoint_00000020"]
        (results,) = [f for f in tune_dir.rglob("result.json") if f"label_{label}" in str(f)]
        reports = [json.loads(line) for line in results.read_text().splitlines()]
        assert [(r["step"], r[LAST_STEP]) for r in reports] == [(10, 0.0), (20, 1.0), (20, 1.0)]
        assert QUICK_METRIC in reports[0] and "select/mean_score" in reports[-1]

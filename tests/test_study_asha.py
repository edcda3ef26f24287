"""ASHA stopping with real Tune and a real MLflow store: a stopped trial's child run is ended, not left RUNNING.

The trainable here reports a scripted quick-probe curve instead of pre-training (the real trials are
exercised by test_lambda_sweep.py); what is under test is Tune + ASHA + the tracking callback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ray import cloudpickle, tune
from ray.tune.schedulers import AsyncHyperBandScheduler

from harness import tracking
from harness.launch import QUICK_METRIC

EXPERIMENT = "asha-test"


def scripted_trial(config: dict) -> None:
    trial_id = tune.get_context().get_trial_id()
    with tracking.training_run(config["uri"], EXPERIMENT, f"t-{config['slope']}", {"slope": config["slope"]},
                               config["parent"], {tracking.TRIAL_TAG: trial_id}) as run:
        for step in range(1, 6):
            tune.report({"step": step, QUICK_METRIC: config["slope"] * step})
        run.set_outcome("finished", "5 steps")


@pytest.mark.usefixtures("ray_session")
def test_trial_stopped_by_asha_is_ended_with_its_outcome(tmp_path: Path) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    uri = tracking.default_uri(tmp_path)
    with tracking.training_run(uri, EXPERIMENT, "study", {"kind": "asha"}) as parent:
        closer = tracking.CloseStoppedTrials(uri, EXPERIMENT, parent.run_id, QUICK_METRIC)
        scheduler = AsyncHyperBandScheduler(time_attr="step", metric=QUICK_METRIC, mode="max", max_t=5,
                                            grace_period=1, reduction_factor=2, stop_last_trials=False)
        tuner = tune.Tuner(
            tune.with_resources(scripted_trial, {"cpu": 0.01}),
            param_space={"slope": tune.grid_search([1.0, 0.1]), "uri": uri, "parent": parent.run_id},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), callbacks=[closer]),
        )
        grid = tuner.fit()
    assert len(grid) == 2 and not grid.errors
    runs = {r["params"]["slope"]: r for r in tracking.child_runs(uri, parent.run_id)}
    assert runs["1.0"]["status"] == "FINISHED" and runs["1.0"]["tags"]["outcome"] == "finished"
    stopped = runs["0.1"]
    assert stopped["status"] == "KILLED" and stopped["tags"]["outcome"] == "stopped_early"
    assert stopped["tags"]["outcome_note"].startswith("stopped by the scheduler after step 1")

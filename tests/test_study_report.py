"""A study's report (harness.study_report) from a real MLflow sqlite store, without Ray: the trial table read
back from child runs, the best config, the Pareto front, importances, plots and report.md."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from harness import tracking
from harness.config import load_config
from harness.space import load_space
from harness.study_report import (
    StudyResult,
    importances,
    markdown_table,
    param_value,
    pareto_front,
    trial_table,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "studies" / "spaces" / "lambda_sweep.yaml"


@pytest.fixture(scope="module")
def base():
    return load_config(REPO / "studies" / "configs" / "tiny.yaml")


def test_pareto_front_keeps_exactly_the_non_dominated_trials() -> None:
    table = pd.DataFrame({"label": list("abcde"), "score": [0.8, 0.7, 0.6, 0.8, 0.5],
                          "uniformity": [-2.0, -3.0, -2.5, -1.0, -3.0]})
    front = pareto_front(table, ("score", "uniformity"), ("max", "min"))
    assert set(front["label"]) == {"a", "b"}  # c is beaten by b, d by a, e by b
    assert markdown_table(front).splitlines()[0] == "| label | score | uniformity |"


def test_importances_rank_the_parameter_that_drives_the_metric(base) -> None:
    space = load_space(SPACE, ["objective.weighting=null", "objective.passes=null", "objective.ema_start=null",
                               "objective.ema_end=null", "masking=null"])
    lambdas = [0.1 + 0.05 * i for i in range(16)]
    others = [0.95 + 0.003 * ((7 * i) % 16) for i in range(16)]  # a permutation: unrelated to the score
    space = {**space, "objective.ema_start": optuna.distributions.FloatDistribution(0.95, 0.999)}
    table = pd.DataFrame({"label": [f"t{i}" for i in range(16)], "outcome": ["finished"] * 16,
                          "trial.objective.lambda_init": lambdas, "trial.objective.ema_start": others,
                          "probe/mean_score": [0.5 + 0.4 * x for x in lambdas]})
    found = importances(table, base, space)["probe/mean_score"]
    assert set(found) == {"objective.lambda_init", "objective.ema_start"}
    assert found["objective.lambda_init"] > 0.7 > found["objective.ema_start"]


def test_logged_parameters_read_back_as_values() -> None:
    assert [param_value(t) for t in ("0.5", "2", "learned", "1e+30", "[0.6, 0.8]")] == \
        [0.5, 2, "learned", 1e30, [0.6, 0.8]]


def test_report_from_child_runs_in_a_real_store(base, tmp_path: Path) -> None:
    """Three child runs (two finished, one diverged): the table, the best config, importances and report.md."""
    uri = tracking.default_uri(tmp_path)
    space = load_space(SPACE, ["objective.weighting=null", "objective.passes=null", "objective.ema_start=null",
                               "objective.ema_end=null", "masking=null"])
    trials = [("a", 0.3, "finished", 0.6), ("b", 0.7, "finished", 0.8), ("c", 0.5, "diverged", None)]
    with tracking.training_run(uri, "report-test", "study", base.to_dict(), tags={"kind": "study"}) as parent:
        pass  # trials log from their own processes, while the parent is not the active run here
    for label, lam, outcome, score in trials:
        with tracking.training_run(uri, "report-test", label, {}, parent.run_id, {"label": label}) as run:
            tracking.log_params({"trial.objective.lambda_init": lam})
            for step in (5, 10):
                tracking.log_metrics({"probe/quick_score": lam * step / 10, "step": step}, step=step)
            if score is not None:
                tracking.log_metrics({"probe/mean_score": score})
            run.set_outcome(outcome, "")
    table = trial_table(uri, parent.run_id, base)
    assert list(table["label"]) == ["b", "a", "c"]  # best first, the diverged trial (no metric) last
    assert list(table["outcome"]) == ["finished", "finished", "diverged"] and list(table["steps"]) == [10, 10, 10]
    with tracking.training_run(uri, "report-test", "study", {}, run_id=parent.run_id):  # as a resumed study
        result = StudyResult(tmp_path / "study", parent.run_id, uri, table, wall_s=60.0)
        out = write_report(result, base, space, [("Extra", "a section of the script's own")])
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["objective"]["lambda_init"] == 0.7 and best["model"] == base.to_dict()["model"]
    text = (out / "report.md").read_text()
    assert "## Best trial" in text and "## Trials" in text and "## Extra" in text
    assert "Hyperparameter importances need at least two finished trials" not in text
    assert (out / "plots" / "quick_probe.png").stat().st_size > 0
    assert (out / "plots" / "metric_vs_params.png").stat().st_size > 0
    logged = tracking.read_run(uri, parent.run_id)
    assert logged["params"]["best.objective.lambda_init"] == "0.7" and logged["tags"]["best_trial"] == "b"
    assert logged["metrics"]["best/probe/mean_score"] == pytest.approx(0.8)
    assert logged["metrics"]["trials/finished"] == 2 and logged["metrics"]["trials/diverged"] == 1

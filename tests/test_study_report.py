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
                          "select/mean_score": [0.5 + 0.4 * x for x in lambdas]})
    found = importances(table, base, space)["select/mean_score"]
    assert set(found) == {"objective.lambda_init", "objective.ema_start"}
    assert found["objective.lambda_init"] > 0.7 > found["objective.ema_start"]


def test_logged_parameters_read_back_as_values() -> None:
    assert [param_value(t) for t in ("0.5", "2", "learned", "1e+30", "[0.6, 0.8]")] == \
        [0.5, 2, "learned", 1e30, [0.6, 0.8]]


def _log_trials(uri: str, base, trials) -> str:
    """A parent run and one child run per (label, λ, outcome, selection score, dev score)."""
    with tracking.training_run(uri, "report-test", "study", base.to_dict(), tags={"kind": "study"}) as parent:
        pass  # trials log from their own processes, while the parent is not the active run here
    for label, lam, outcome, score, dev in trials:
        with tracking.training_run(uri, "report-test", label, {}, parent.run_id, {"label": label}) as run:
            tracking.log_params({"trial.objective.lambda_init": lam})
            for step in (5, 10):
                tracking.log_metrics({"select/quick_score": lam * step / 10, "step": step}, step=step)
            if score is not None:
                tracking.log_metrics({"select/mean_score": score, "probe/mean_score": dev})
            run.set_outcome(outcome, "")
    return parent.run_id


def test_report_from_child_runs_in_a_real_store(base, tmp_path: Path) -> None:
    """Three child runs (two finished, one diverged): the table, the best config, importances and report.md."""
    uri = tracking.default_uri(tmp_path)
    space = load_space(SPACE, ["objective.weighting=null", "objective.passes=null", "objective.ema_start=null",
                               "objective.ema_end=null", "masking=null"])
    parent = _log_trials(uri, base, [("a", 0.3, "finished", 0.6, 0.9), ("b", 0.7, "finished", 0.8, 0.1),
                                     ("c", 0.5, "diverged", None, None)])
    table = trial_table(uri, parent, base)
    assert list(table["label"]) == ["b", "a", "c"]  # best first, the diverged trial (no metric) last
    assert list(table["outcome"]) == ["finished", "finished", "diverged"] and list(table["steps"]) == [10, 10, 10]
    assert list(table["probe/mean_score"][:2]) == [0.1, 0.9]  # the final dev score is shown, never ranks
    with tracking.training_run(uri, "report-test", "study", {}, run_id=parent):  # as a resumed study
        result = StudyResult(tmp_path / "study", parent, uri, table, wall_s=60.0)
        out = write_report(result, base, space, [("Extra", "a section of the script's own")])
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["objective"]["lambda_init"] == 0.7 and best["model"] == base.to_dict()["model"]
    text = (out / "report.md").read_text()
    assert "## Best trial" in text and "## Trials" in text and "## Extra" in text
    assert "never used to choose" in text
    assert "Hyperparameter importances need at least two finished trials" not in text
    assert (out / "plots" / "quick_probe.png").stat().st_size > 0
    assert (out / "plots" / "metric_vs_params.png").stat().st_size > 0
    # report.html: the same report as one page, its plots inlined (MLflow's artifact view shows it alone)
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == text.count("![") >= 2 and "plots/" not in page
    assert "<h2>Trials</h2>" in page and "<th>select/mean_score</th>" in page and "<pre>" in page
    trials_md = text.split("## Trials")[1].split("\n\n")[1].splitlines()[0]  # the Trials table's header row
    header = [c.strip() for c in trials_md.strip("|").split("|")]
    assert header[:4] == ["label", "group", "outcome", "steps"] and header.index("select/mean_score") < header.index(
        "lambda_init")  # the scores first, then the searched values under short names
    logged = tracking.read_run(uri, parent)
    assert logged["params"]["best.objective.lambda_init"] == "0.7" and logged["tags"]["best_trial"] == "b"
    assert logged["metrics"]["best/select/mean_score"] == pytest.approx(0.8)
    assert "best/probe/mean_score" not in logged["metrics"]
    assert logged["metrics"]["trials/finished"] == 2 and logged["metrics"]["trials/diverged"] == 1


@pytest.mark.parametrize("multi", [False, True])
def test_selection_is_blind_to_dev_scores(base, tmp_path: Path, multi: bool) -> None:
    """The same trials with their dev scores perturbed (here reversed) give the same ranking, best trial, best config
    and Pareto front: nothing that chooses reads GLUE dev."""
    two = ["study.metric=[select/mean_score, select/quick_score]", "study.mode=[max, max]"]
    cfg = load_config(REPO / "studies" / "configs" / "tiny.yaml", two if multi else [])
    space = load_space(SPACE, ["objective.weighting=null", "objective.passes=null", "objective.ema_start=null",
                               "objective.ema_end=null", "masking=null"])
    chosen = []
    for name, devs in (("dev", [0.2, 0.5, 0.8]), ("perturbed", [0.9, 0.1, 0.3])):
        uri = tracking.default_uri(tmp_path / name)
        trials = [(label, lam, "finished", score, dev) for (label, lam, score), dev
                  in zip((("a", 0.2, 0.6), ("b", 0.5, 0.8), ("c", 0.8, 0.7)), devs, strict=True)]
        parent = _log_trials(uri, cfg, trials)
        table = trial_table(uri, parent, cfg)
        with tracking.training_run(uri, "report-test", "study", {}, run_id=parent):
            out = write_report(StudyResult(tmp_path / name, parent, uri, table, wall_s=1.0), cfg, space, [])
        logged = tracking.read_run(uri, parent)
        chosen.append((list(table["label"]), logged["tags"]["best_trial"], (out / "best_config.yaml").read_text(),
                       {k: v for k, v in logged["metrics"].items() if k.startswith("best/")}))
    assert chosen[0] == chosen[1]
    assert chosen[0][1] == "b" and all(k.startswith("best/select/") for k in chosen[0][3])

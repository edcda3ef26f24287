"""Study building blocks that need no cluster: search spaces, trial configs, metric names, fronts, fits."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from harness.config import ConfigError, load_config
from harness.study import apply_params, check_metrics, check_space, load_space, load_spec
from harness.study_report import importances, markdown_table, pareto_front

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "studies" / "spaces" / "lambda_sweep.yaml"


@pytest.fixture(scope="module")
def base():
    return load_config(REPO / "studies" / "configs" / "tiny.yaml")


def test_shipped_space_covers_the_issue_dimensions(base) -> None:
    space = load_space(SPACE)
    assert set(space) == {
        "objective.lambda_init", "objective.weighting", "objective.passes", "objective.ema_start",
        "objective.ema_end", "masking.enc_mask_scale.0", "masking.enc_mask_scale.1", "masking.pred_mask_scale.0",
        "masking.pred_mask_scale.1", "masking.num_pred_masks"}
    assert space["objective.passes"] == optuna.distributions.CategoricalDistribution([1, 2])
    assert isinstance(space["masking.num_pred_masks"], optuna.distributions.IntDistribution)
    check_space(base, space)  # every bound gives a valid config


def test_space_overrides_replace_and_drop_dimensions() -> None:
    space = load_space(SPACE, ["objective.passes={choice: [2]}", "masking.num_pred_masks=null",
                               "optim.lr={logfloat: [1.0e-4, 1.0e-3]}"])
    assert space["objective.passes"].choices == (2,)
    assert "masking.num_pred_masks" not in space
    assert space["optim.lr"].log and space["optim.lr"].low == pytest.approx(1e-4)


def test_spec_overrides_replace_and_delete() -> None:
    spec = load_spec(REPO / "studies" / "spaces" / "scaling.yaml", ["token_budgets=[1000]", "sizes.d384=null"])
    assert spec["token_budgets"] == [1000] and set(spec["sizes"]) == {"d128", "d256"}
    spec = load_spec(REPO / "studies" / "spaces" / "scaling.yaml", ["sizes={d32: {model.hidden_size: 32}}"])
    assert spec["sizes"] == {"d32": {"model.hidden_size": 32}}  # a mapping value replaces, never merges


@pytest.mark.parametrize(("override", "message"), [
    ("objective.lambda_init={uniform: [0, 1]}", "objective.lambda_init"),
    ("objective.lambda_init={float: [0.9, 0.1]}", "low < high"),
    ("objective.weighting={choice: []}", "non-empty"),
])
def test_malformed_dimensions_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(SPACE, [override])


def test_space_whose_bounds_break_the_config_is_refused_before_any_trial(base) -> None:
    with pytest.raises(ConfigError, match=r"objective.lambda_init: value 1.5 .*must lie in \(0, 1\)"):
        check_space(base, load_space(SPACE, ["objective.lambda_init={float: [0.5, 1.5]}"]))
    # each end of the pair is valid alone, but a trial could draw low 0.8 with high 0.7
    with pytest.raises(ConfigError, match="low end's range must lie below"):
        check_space(base, load_space(SPACE, ["masking.enc_mask_scale=[{float: [0.6, 0.8]}, {float: [0.7, 0.84]}]"]))


def test_apply_params_sets_pair_ends_and_refuses_shared_settings(base) -> None:
    cfg = apply_params(base, {"masking.enc_mask_scale.0": 0.6, "objective.lambda_init": 0.3, "seed": 4})
    assert cfg.masking.enc_mask_scale == (0.6, base.masking.enc_mask_scale[1])
    assert cfg.objective.lambda_init == 0.3 and cfg.seed == 4
    with pytest.raises(ConfigError, match="no such config key"):
        apply_params(base, {"objective.lambda": 0.3})
    with pytest.raises(ConfigError, match="shared by all trials"):
        apply_params(base, {"data.seq_len": 32})


def test_optimised_metric_must_be_one_a_trial_reports(base) -> None:
    check_metrics(base)
    for good in ("probe/sst2/mean/acc", "geom/stsb/attention/uniformity", "probe/mean_score/max", "val/loss_mlm"):
        check_metrics(load_config(REPO / "studies" / "configs" / "tiny.yaml", [f"study.metric={good}"]))
    bad = load_config(REPO / "studies" / "configs" / "tiny.yaml", ["study.metric=probe/qnli/mean/acc"])
    with pytest.raises(ConfigError, match="study.metric='probe/qnli/mean/acc'"):
        check_metrics(bad)
    with pytest.raises(ConfigError, match="one mode"):
        load_config(REPO / "studies" / "configs" / "tiny.yaml", ["study.metric=[probe/mean_score, val/loss_mlm]"])


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


def test_bad_eval_names_and_paths_stop_a_study_before_any_work(base, tmp_path) -> None:
    from harness.study import open_study

    space = load_space(SPACE)
    for overrides, message in ((["eval.tasks=[sst2, qnli]"], "eval: unknown task 'qnli'"),
                               (["eval.poolings=[mean, median]"], "eval: unknown pooling median"),
                               ([f"eval.glue_dir={tmp_path / 'nowhere'}"], "GLUE folder .* not found")):
        cfg = load_config(REPO / "studies" / "configs" / "tiny.yaml", [*overrides, f"output_dir={tmp_path}"])
        with pytest.raises((ConfigError, FileNotFoundError), match=message), open_study(cfg, space=space):
            pass
    assert not (tmp_path / "studies").exists() and not (tmp_path / "data").exists()  # nothing was written

"""Search spaces, study files and trial parameters (harness.space), and the study modules' import direction:
no cluster, no store."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

from harness.config import ConfigError, load_config
from harness.space import apply_params, check_space, load_space, load_spec

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


def test_space_override_of_one_end_of_a_pair() -> None:
    space = load_space(SPACE, ["masking.enc_mask_scale.0={float: [0.5, 0.6]}", "masking.pred_mask_scale.1=null"])
    assert (space["masking.enc_mask_scale.0"].low, space["masking.enc_mask_scale.0"].high) == (0.5, 0.6)
    assert space["masking.enc_mask_scale.1"].low == pytest.approx(0.75)  # the other end as shipped
    assert "masking.pred_mask_scale.1" not in space and "masking.pred_mask_scale.0" in space


def test_spec_overrides_replace_and_delete() -> None:
    spec = load_spec(REPO / "studies" / "spaces" / "scaling.yaml", ["token_budgets=[1000]", "sizes.d384=null"])
    assert spec["token_budgets"] == [1000] and set(spec["sizes"]) == {"d128", "d256"}
    spec = load_spec(REPO / "studies" / "spaces" / "scaling.yaml", ["sizes={d32: {model.hidden_size: 32}}"])
    assert spec["sizes"] == {"d32": {"model.hidden_size": 32}}  # a mapping value replaces, never merges


def test_bad_study_files_and_overrides_are_named() -> None:
    with pytest.raises(ConfigError, match="study file .*nowhere.yaml not found"):
        load_spec(REPO / "studies" / "spaces" / "nowhere.yaml")
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_spec(SPACE, ["objective.passes"])
    with pytest.raises(ConfigError, match="objective.passes.choice is not a mapping"):
        load_spec(SPACE, ["objective.passes.choice.x=1"])


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
    with pytest.raises(ConfigError, match="the pair has elements 0 to 1 only"):
        apply_params(base, {"masking.enc_mask_scale.2": 0.5})
    with pytest.raises(ConfigError, match="shared by all trials"):
        apply_params(base, {"data.seq_len": 32})
    with pytest.raises(ConfigError, match="must lie in"):  # the result is validated
        apply_params(base, {"objective.lambda_init": 1.5})


def _harness_imports(module: Path) -> set[str]:
    """The harness modules `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "harness" else [f"harness.{a.name}" for a in node.names]
        found.update(n.removeprefix("harness.") for n in names if n.startswith("harness."))
    return found


def test_study_modules_import_downward() -> None:
    """space <- trial <- study and study_report <- study: none imports a module above it, lazily or not."""
    imports = {name: _harness_imports(REPO / "harness" / f"{name}.py")
               for name in ("space", "trial", "study_report", "study")}
    assert imports["space"] <= {"config"}
    assert not imports["trial"] & {"study", "study_report"}
    assert not imports["study_report"] & {"study", "trial"}

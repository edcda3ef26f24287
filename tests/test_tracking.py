"""MLflow as a user opens it: artifacts under the store's folder (never ./mlruns of the current directory), and
experiments that open on their training runs."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import tracking


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the directory a user happens to run from
    return cwd


def test_artifacts_land_beside_the_sqlite_store_not_in_the_current_directory(tmp_path: Path, elsewhere: Path) -> None:
    out = tmp_path / "outputs"
    uri = tracking.default_uri(out)
    (tmp_path / "note.txt").write_text("hello")
    with tracking.training_run(uri, "exp", "run", {"a": {"b": 1}}) as run:
        tracking.log_artifact(tmp_path / "note.txt", "notes")
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    artifacts = {f.name for f in files if f.parts[0] == "mlartifacts"}
    assert {"note.txt", "config.yaml"} <= artifacts, files
    assert not any(elsewhere.iterdir()), "nothing may be written to the current directory"
    stored = MlflowClient(uri).get_run(run.run_id).info.artifact_uri
    assert stored.startswith((out / "mlartifacts").as_uri())


def test_experiments_open_on_their_training_runs(tmp_path: Path, elsewhere: Path) -> None:
    uri = tracking.default_uri(tmp_path)
    client = MlflowClient(uri)
    client.create_experiment("old", artifact_location=(tmp_path / "old").as_uri())  # made before the tag existed
    for name in ("new", "old"):
        tracking.use_experiment(uri, name)
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"


def test_pairs_are_numeric_params_named_like_the_search_space_ends(tmp_path: Path, elsewhere: Path) -> None:
    """A (low, high) pair is logged as its two ends, numbers that MLflow's parallel coordinates and Compare can
    plot, under the names a search space gives them (masking.enc_mask_scale.0); non-numeric lists stay as they are."""
    from harness.config import load_config
    from harness.space import load_space

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "studies" / "configs" / "tiny.yaml")
    space = load_space(repo / "studies" / "spaces" / "lambda_sweep.yaml")
    uri = tracking.default_uri(tmp_path)
    with tracking.training_run(uri, "exp", "trial", cfg.to_dict()) as run:
        tracking.log_params({"trial.masking.enc_mask_scale": [0.6, 0.8], "trial.masking.pred_mask_scale.1": 0.2,
                             "trial.objective.lambda_init": 0.3})
    params = MlflowClient(uri).get_run(run.run_id).data.params
    low, high = cfg.masking.enc_mask_scale
    assert (float(params["masking.enc_mask_scale.0"]), float(params["masking.enc_mask_scale.1"])) == (low, high)
    assert float(params["masking.pred_mask_scale.1"]) == cfg.masking.pred_mask_scale[1]
    assert float(params["optim.betas.0"]) == cfg.optim.betas[0]
    assert (params["trial.masking.enc_mask_scale.0"], params["trial.masking.enc_mask_scale.1"]) == ("0.6", "0.8")
    assert params["trial.masking.pred_mask_scale.1"] == "0.2"
    pair_ends = [k for k in space if k.startswith(("masking.enc_mask_scale.", "masking.pred_mask_scale."))]
    assert len(pair_ends) == 4 and set(pair_ends) <= set(params)  # the config's pair ends, named as searched
    assert not {"masking.enc_mask_scale", "masking.pred_mask_scale", "trial.masking.enc_mask_scale"} & set(params)
    assert params["eval.tasks"] == str(cfg.eval.tasks)  # a list of names stays one param
    # What the parallel-coordinates plot reads: every end is a number.
    for key in [k for k in params if k.startswith(("masking.", "trial.masking."))]:
        float(params[key])

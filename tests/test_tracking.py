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

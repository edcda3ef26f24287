"""MLflow tracking: the only module in the project that imports mlflow.

- `check_reachable` fails at start (not after hours) when the store or server cannot be used.
- `training_run` opens the run of one pre-training run (flattened config as params, the config YAML)
  and ends it FINISHED, or FAILED when it raised or diverged.
- `log_report` logs a Train report; harness.train_callbacks.ReportToMLflow calls it on the Train controller, which
  Ray pins to the driver's node, so per-step metrics reach a tracking server bound to 127.0.0.1 on the head.
- Studies: a parent run per study, a child run per Tune trial found again by its trial id (a resumed
  study reopens both instead of duplicating them); `CloseStoppedTrials` is a Tune callback that tags
  and ends the child runs of trials stopped early by the scheduler.
- `log_metrics` / `log_artifact` log to the active run and are no-ops without one, so library code
  (evaluation) can log unconditionally.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback


class TrackingError(RuntimeError):
    """The tracking store or server cannot be used."""


def default_uri(output_dir: Path) -> str:
    """A sqlite store in the output dir (MLflow's plain-directory store is deprecated)."""
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def check_reachable(uri: str) -> None:
    """Raise TrackingError now if `uri` cannot take runs."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                ok = response.status == 200
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"MLflow server at {uri} is unreachable ({e}); start it (mlflow server --backend-store-uri "
                "sqlite:///ABS/mlflow.db --host 127.0.0.1 --port 5000) or set tracking.uri=sqlite:///ABS/mlflow.db"
            ) from None
        if not ok:
            raise TrackingError(f"MLflow server at {uri} answered /health with status {response.status}")
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"tracking.uri={uri}: cannot create {db.parent} ({e})") from None
        if not db.parent.is_dir() or not _writable(db.parent):
            raise TrackingError(f"tracking.uri={uri}: {db.parent} is not writable")
    else:
        raise TrackingError(f"tracking.uri={uri!r}: use sqlite:///ABS/PATH/mlflow.db or http(s)://host:port "
                            "(MLflow's plain-directory store is deprecated)")


def _writable(directory: Path) -> bool:
    probe = directory / ".write_probe"
    try:
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}"""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class RunHandle:
    run_id: str
    status: str = "FINISHED"  # how the run ends in MLflow: FINISHED, FAILED or KILLED

    def set_outcome(self, outcome: str, note: str) -> None:
        """Record how the run ended ('finished', 'diverged', ...) as tags; non-finished ends FAILED."""
        mlflow.set_tags({"outcome": outcome, "outcome_note": note})
        if outcome != "finished":
            self.status = "FAILED"


@contextmanager
def training_run(uri: str, experiment: str, run_name: str, config: dict[str, Any],
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 run_id: str | None = None) -> Iterator[RunHandle]:
    """Open a run (nested under `parent_run_id` if given; or reopen `run_id`) and log the config.
    An exception ends it FAILED; Ctrl-C, or Tune stopping a trial (SystemExit in its thread), KILLED."""
    use_experiment(uri, experiment)
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    handle = RunHandle(run.info.run_id)
    try:
        if run_id is None:
            log_params(flatten(config))
            mlflow.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
        yield handle
    except BaseException:
        handle.status = "KILLED" if sys.exc_info()[0] in (KeyboardInterrupt, SystemExit) else "FAILED"
        raise
    finally:
        mlflow.end_run(status=handle.status)


# MLflow 3's UI: this tag marks an experiment as holding model-training runs. MLflow 3.17's UI picks its GenAI or
# model-training pages by a per-browser setting (default GenAI) that the query parameter of `ui_link` overrides.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
TRAINING_VIEW = "?workflowType=machine_learning"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store (`<its dir>/mlartifacts`, i.e. under the
    output dir by default); None for a server, which decides itself (`mlflow server --artifacts-destination`).
    MLflow's own default would be ./mlruns of the current directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def use_experiment(uri: str, name: str) -> str:
    """Make `name` the active experiment, creating it with its artifacts under the store's folder and the tag
    that opens it on its training runs in the UI; returns its id."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by a concurrent trial
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = found.experiment_id
        if found.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def find_run(uri: str, experiment: str, tags: Mapping[str, str]) -> str | None:
    """The id of the newest run of `experiment` carrying all `tags`, or None."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([found.experiment_id], filter_string=query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def find_unfinished_run(uri: str, experiment: str, tags: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(run id, run name, status) of the newest run of `experiment` with all `tags` that did not end on its own:
    interrupted (KILLED), crashed (FAILED without an `outcome` tag) or cut off (still RUNNING after a reboot);
    None if there is none."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    for run in client.search_runs([found.experiment_id], filter_string=query, max_results=20,
                                  order_by=["attributes.start_time DESC"]):
        if run.info.status != "FINISHED" and "outcome" not in run.data.tags:
            return run.info.run_id, run.info.run_name, run.info.status
    return None


def child_runs(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Every child of a parent run: run_id, name, status, tags, params, metrics (latest values)."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=10_000,
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "tags": dict(r.data.tags),
             "params": dict(r.data.params), "metrics": dict(r.data.metrics)} for r in runs]


def end_run(uri: str, run_id: str, status: str, tags: Mapping[str, str]) -> None:
    """Tag and end a run from outside the process that opened it."""
    client = MlflowClient(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


def active() -> bool:
    """True when an MLflow run is active in this process."""
    return mlflow.active_run() is not None


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log scalar metrics to the active run (names like `probe/sst2/mean/acc`)."""
    if active() and metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def split_sequences(params: Mapping[str, Any]) -> dict[str, Any]:
    """A list of numbers (a (low, high) pair such as masking.enc_mask_scale) as one param per element, named as a
    search space and `key=value` overrides name them: `masking.enc_mask_scale.0`, `.1`. MLflow's parallel
    coordinates and Compare plot a param only when its values are numbers; the pair's string "(0.65, 0.85)" is
    not logged as well, since its ends say the same."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, list | tuple) and value and all(_is_number(v) for v in value):
            out.update({f"{key}.{i}": v for i, v in enumerate(value)})
        else:
            out[key] = value
    return out


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters to the active run (values as strings; lists of numbers one param per element)."""
    if active() and params:
        mlflow.log_params({k: str(v)[:6000] for k, v in split_sequences(params).items()})


def set_tags(tags: Mapping[str, str]) -> None:
    if active() and tags:
        mlflow.set_tags(dict(tags))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Attach a file or a directory to the active run."""
    if not active():
        return
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_report(uri: str, run_id: str, reported: Mapping[str, Any]) -> None:
    """Log a Train report's finite numbers to a run at the report's step (harness.train_callbacks.ReportToMLflow)."""
    step = int(reported.get("step", 0))
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in reported.items()
             if isinstance(value, int | float) and math.isfinite(float(value))]
    if batch:
        _client(uri).log_batch(run_id, metrics=batch)


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    return MlflowClient(uri)  # one per store and process: a sqlite store opens its engine once


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """[(step, value), ...] of one metric of a run, in logging order."""
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def ui_link(uri: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The run's page in the MLflow UI served at `ui` (for a tracking server: the server itself), opened on the
    model-training pages."""
    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def read_run(uri: str, run_id: str) -> dict[str, Any]:
    """A run's status, tags, params and latest metrics."""
    run = MlflowClient(uri).get_run(run_id)
    return {"status": run.info.status, "tags": dict(run.data.tags), "params": dict(run.data.params),
            "metrics": dict(run.data.metrics)}


TRIAL_TAG = "tune_trial_id"


class CloseStoppedTrials(Callback):
    """Tune callback (on the study driver). A trial that completes without having tagged its run
    "finished" was stopped by the scheduler (ASHA stops a trial mid-run: its run is still RUNNING, or
    KILLED by the SystemExit Tune raises in it); a trial that errors with its run still RUNNING died.
    Either way its run is ended and tagged with that outcome."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, scheduler_metric: str):
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self.scheduler_metric = scheduler_metric

    def _close(self, trial, outcome: str, status: str) -> None:
        run_id = find_run(self.uri, self.experiment, {"mlflow.parentRunId": self.parent_run_id,
                                                      TRIAL_TAG: trial.trial_id})
        if run_id is None:
            return
        run = MlflowClient(self.uri).get_run(run_id)
        if outcome == "stopped_early" and run.data.tags.get("outcome") == "finished":
            return
        if outcome == "error" and run.info.status != "RUNNING":  # it recorded its own failure (e.g. diverged)
            return
        last = trial.last_result or {}
        score = last.get(self.scheduler_metric)
        note = (f"stopped by the scheduler after step {last.get('step', '?')} ({self.scheduler_metric}={score:.4f})"
                if outcome == "stopped_early" and isinstance(score, float) else f"trial ended: {outcome}")
        end_run(self.uri, run_id, status, {"outcome": outcome, "outcome_note": note})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, "stopped_early", "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, "error", "FAILED")

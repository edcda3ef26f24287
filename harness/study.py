"""Studies on Ray Tune: the one engine behind studies/*.py.

    with open_study(cfg, space=space) as study:      # checks, data prepared once, MLflow parent run
        result = study.run()                          # Tune trials (or resumes an interrupted study)
        study.report(result)                          # summary table, best config, importances, report.md

Trials (harness.trial) are either drawn by Optuna from a search space (harness.space) or given as an
explicit grid of `TrialSpec`s. Every finished trial is evaluated under each of the study's evaluation
`protocols` (default: the harness's own; `("harness", "reference")` adds the paper's reference protocol).

A study lives in <output_dir>/studies/<study.name>/: study.json (parent run id, what the study is),
tune/ (Tune's state), train/ (each trial's Train run and checkpoints), trials/<label>/ (encoder, eval),
report/. Running the same study again resumes it: finished trials are kept, unfinished ones resume
from their last checkpoint under the same child run; a different config under the same name is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from eval.quick import build_quick_probe
from eval.suite import SuiteConfig, preflight_tasks
from harness import tracking
from harness.config import Config, ConfigError, resolve_location, resolve_path
from harness.console import own_logging, quiet_libraries
from harness.costs import warn_if_costly
from harness.evaluation import protocol_suite
from harness.launch import QUICK_METRIC, build_tuner, check_trial_placement, restore_tuner
from harness.pretrain import prepare_run
from harness.space import Space, apply_params, check_space
from harness.study_report import StudyResult, trial_table, write_report
from harness.trial import StudyContext, TrialSpec, check_metrics, run_trial

logger = logging.getLogger(__name__)

SETUP_ERRORS = (ConfigError, FileNotFoundError, tracking.TrackingError)  # what a study script reports plainly
# Settings that only shape resources: a study may resume with other values (e.g. on another cluster).
RESOURCE_KEYS = (("study", "max_concurrent"), ("train", "cpus_per_worker"), ("train", "torch_threads"),
                 ("eval", "cpus"))


# ---------------------------------------------------------------- the scripts' command line


def run_script(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a study script's body (its arguments parsed by harness.cli.study_arguments) with the harness's progress
    (INFO logs) on stdout; a bad config, spec, path or store ends it with one plain line on stderr and status 2."""
    own_logging(sys.stdout, "[%(name)s] %(message)s")
    quiet_libraries()
    try:
        return run(args)
    except SETUP_ERRORS as e:
        message = f"[{name}] {e}"
        print(message, file=sys.stderr)
        error = SystemExit(message)
        error.code = 2  # the status of a usage error, as argparse's; the message stays the exception's text
        raise error from None


# ---------------------------------------------------------------- the study


class Study:
    """An open study (see open_study): run its trials, then write its report."""

    def __init__(self, context: StudyContext, space: Space | None, grid: list[TrialSpec] | None,
                 resumed: bool) -> None:
        self.context, self.space, self.grid, self.resumed = context, space, grid, resumed

    @property
    def cfg(self) -> Config:
        return self.context.cfg

    def run(self) -> StudyResult:
        start = time.time()
        trainable = tune.with_parameters(run_trial, context=self.context)
        tuner = restore_tuner(self.context.cfg, self.context.study_dir, trainable) if self.resumed else None
        if tuner is None:
            closer = tracking.CloseStoppedTrials(self.context.prepared.tracking_uri, self.cfg.tracking.experiment,
                                                 self.context.parent_run_id, QUICK_METRIC)
            grid = None if self.grid is None else [dataclasses.asdict(t) for t in self.grid]
            tuner = build_tuner(self.cfg, trainable, self.context.study_dir, [closer], self.space, grid)
        else:
            logger.info("resuming %s: finished trials are kept", self.context.study_dir)
        tuner.fit()
        uri, parent = self.context.prepared.tracking_uri, self.context.parent_run_id
        return StudyResult(self.context.study_dir, parent, uri, trial_table(uri, parent, self.cfg), time.time() - start)

    def report(self, result: StudyResult, sections: Sequence[tuple[str, str]] = ()) -> Path:
        """Write report/ (summary table, best config, importances, plots, report.md, then `sections`, each
        (title, markdown)) and log it to the parent run."""
        return write_report(result, self.cfg, self.space, list(sections))


def fingerprint(cfg: Config, space: Space | None, grid: list[TrialSpec] | None,
                protocols: Sequence[str] = ("harness",)) -> dict[str, Any]:
    """What a study is, as JSON: its config without the RESOURCE_KEYS, its space or its grid, and its evaluation
    protocols (left out when only the harness's)."""
    what = cfg.to_dict()
    for section, key in RESOURCE_KEYS:
        del what[section][key]
    out = {"config": what, "space": {k: repr(v) for k, v in (space or {}).items()},
           "grid": [dataclasses.asdict(t) for t in grid or []]}
    if tuple(protocols) != ("harness",):
        out["protocols"] = list(protocols)
    return json.loads(json.dumps(out, default=str))


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """["optim.batch_size: was 8, now 4", ...] between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: was {a!r}, now {b!r}"]


def warn_if_crowded(cfg: Config) -> None:
    """Concurrent trials whose workers leave the cluster less than one whole CPU starve Ray Data's file
    listing, and the trials wait forever. Only a warning: an autoscaling cluster may add nodes later."""
    cpus = ray.cluster_resources().get("CPU", 0.0)
    taken = cfg.study.max_concurrent * (cfg.train.num_workers * cfg.train.cpus_per_worker + 0.01)
    if cpus - taken < 1:
        logger.warning("%d concurrent trials take %.2f of the cluster's %g CPUs and leave less than one whole CPU "
                       "for Ray Data's readers: unless the cluster scales up, trials will wait forever. Lower "
                       "study.max_concurrent or train.cpus_per_worker.", cfg.study.max_concurrent, taken, cpus)


def _check(cfg: Config, space: Space | None, grid: list[TrialSpec] | None,
           protocols: Sequence[str]) -> tuple[Path | None, tuple[SuiteConfig, ...]]:
    """Everything that needs no data, no Ray and no store: the GLUE folder and the suites' settings."""
    if (space is None) == (grid is None):
        raise ValueError("a study searches a space (Optuna) or runs a grid of trials, not both or neither")
    if cfg.study.scheduler == "asha" and not cfg.train.eval_every:
        raise ConfigError("study.scheduler=asha needs train.eval_every >= 1 (the quick probe runs at eval steps)")
    check_metrics(cfg)
    if space is not None:
        check_space(cfg, space)
    for spec in grid or []:
        apply_params(cfg, spec.overrides)
    if grid and len({t.label for t in grid}) != len(grid):
        raise ConfigError("grid trials need distinct labels")
    if not protocols or len(set(protocols)) != len(protocols) or protocols[0] != "harness":
        raise ConfigError(f"evaluation protocols {list(protocols)}: distinct names, the harness's first")
    glue_dir = Path(resolve_location(cfg.eval.glue_dir)) if cfg.eval.glue_dir else None
    suites = tuple(protocol_suite(cfg.eval.suite_config(), p) for p in protocols)
    try:
        for suite in suites:
            preflight_tasks(glue_dir, suite, cfg.eval.quick_tasks)
    except ValueError as e:  # an unknown task or pooling name
        raise ConfigError(f"eval: {e}") from None
    return glue_dir, suites


@contextmanager
def open_study(cfg: Config, space: Space | None = None, grid: list[TrialSpec] | None = None,
               protocols: Sequence[str] = ("harness",)) -> Iterator[Study]:
    """Check everything cheap, prepare the data once, open (or reopen) the study's MLflow parent run.
    `protocols`: the evaluation protocols of every finished trial, the harness's first."""
    protocols = tuple(protocols)
    glue_dir, suites = _check(cfg, space, grid, protocols)
    study_dir = resolve_path(cfg.output_dir) / "studies" / cfg.study.name
    state_file = study_dir / "study.json"
    what = fingerprint(cfg, space, grid, protocols)
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    if state is not None and state["fingerprint"] != what:
        diffs = differences(state["fingerprint"], what)
        raise ConfigError(f"study {cfg.study.name!r} in {study_dir} was started with other settings ("
                          + "; ".join(diffs[:8]) + "). Resume it with its own settings, or start a new study "
                          "with study.name=<new name>.")
    try:
        prepared = prepare_run(cfg)
    except ValueError as e:  # e.g. a tokenizer larger than model.vocab_size, a checkpoint of another model
        raise ConfigError(str(e)) from None
    check_trial_placement(cfg.train, ray.cluster_resources())
    warn_if_crowded(cfg)
    warn_if_costly(prepared.cfg)
    quick = build_quick_probe(cfg.eval.quick_tasks, glue_dir, prepared.tokenizer,
                              cfg.eval.quick_train, cfg.eval.quick_dev, cfg.eval.quick_max_len)
    with tracking.training_run(prepared.tracking_uri, cfg.tracking.experiment, cfg.study.name, cfg.to_dict(),
                               tags={"study": cfg.study.name, "kind": "study"},
                               run_id=state["parent_run_id"] if state else None) as parent:
        if state is None:
            study_dir.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"parent_run_id": parent.run_id, "fingerprint": what,
                                              "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
        context = StudyContext(prepared.cfg, prepared, quick, suites, glue_dir, study_dir, parent.run_id)
        yield Study(context, space, grid, resumed=state is not None)

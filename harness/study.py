"""Studies on Ray Tune: the one engine behind studies/*.py.

    with open_study(cfg, space=space) as study:      # checks, data prepared once, MLflow parent run
        result = study.run()                          # Tune trials (or resumes an interrupted study)
        study.report(result)                          # summary table, best config, importances, report.md

A trial is one pre-training run (harness.pretrain.train) under a child MLflow run, reporting the quick
probe at every eval step (what ASHA stops on); a trial that finishes gets the full evaluation suite in
a Ray task, and its final result carries the study's metric(s). Trials are either drawn by Optuna from
a search space (YAML, see `load_space`) or given as an explicit grid of `TrialSpec`s.

A study lives in <output_dir>/studies/<study.name>/: study.json (parent run id, what the study is),
tune/ (Tune's state), train/ (each trial's Train run and checkpoints), trials/<label>/ (encoder, eval),
report/. Running the same study again resumes it: finished trials are kept, unfinished ones resume
from their last checkpoint under the same child run; a different config under the same name is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from eval.quick import QuickTask, build_quick_probe
from eval.report import write_run
from eval.suite import SuiteConfig, headline_metrics, preflight_tasks, result_metrics, run_suite
from harness import tracking
from harness.config import Config, ConfigError, config_from_dict, parse_override, resolve_location, resolve_path
from harness.launch import QUICK_METRIC, build_tuner, restore_tuner
from harness.pretrain import PreparedRun, prepare_run, train

SETUP_ERRORS = (ConfigError, FileNotFoundError, tracking.TrackingError)  # what a study script reports plainly
DISTRIBUTIONS = ("float", "logfloat", "int", "choice")
FORBIDDEN = ("data.", "output_dir", "tracking.", "study.", "eval.")  # shared by all trials of a study


class TrialDiverged(RuntimeError):
    """The trial's loss became NaN/inf; its child run is marked diverged and the study goes on."""


# ---------------------------------------------------------------- the scripts' command line


def study_arguments(doc: str, spec_option: str, default_spec: str, argv: list[str] | None) -> argparse.Namespace:
    """--config, the study's YAML (`--space` or `--spec`), --smoke, and overrides: `<space|spec>.key=value`
    ones edit the study's YAML (args.spec_overrides), the others the config (args.config_overrides)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="base config, e.g. studies/configs/small.yaml")
    parser.add_argument(spec_option, dest="spec", default=default_spec, help=f"the study's YAML ({default_spec})")
    parser.add_argument("--smoke", action="store_true", help="a few tiny trials (use with studies/configs/tiny.yaml)")
    prefix = f"{spec_option.removeprefix('--')}."
    parser.add_argument("overrides", nargs="*", help=f"dotted config overrides; {prefix}* ones edit {spec_option}")
    args = parser.parse_args(argv)
    args.config_overrides = [o for o in args.overrides if not o.startswith(prefix)]
    args.spec_overrides = [o.removeprefix(prefix) for o in args.overrides if o.startswith(prefix)]
    return args


def exit_on_setup_error(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a study script's body; a bad config, spec, path or store ends it with one plain line."""
    try:
        return run(args)
    except SETUP_ERRORS as e:
        raise SystemExit(f"[{name}] {e}") from None


# ---------------------------------------------------------------- search spaces and trial specs


def _distribution(key: str, leaf: Any) -> optuna.distributions.BaseDistribution:
    if not (isinstance(leaf, dict) and len(leaf) == 1 and next(iter(leaf)) in DISTRIBUTIONS):
        raise ConfigError(f"search space {key}={leaf!r}: give one of {{float: [lo, hi]}}, {{logfloat: [lo, hi]}}, "
                          "{int: [lo, hi]}, {choice: [a, b, ...]}")
    kind, args = next(iter(leaf.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search space {key}: choice needs a non-empty list")
        return optuna.distributions.CategoricalDistribution(args)
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)
            and args[0] < args[1]):
        raise ConfigError(f"search space {key}: {kind} needs [low, high] numbers with low < high, got {args!r}")
    if kind == "int":
        return optuna.distributions.IntDistribution(int(args[0]), int(args[1]))
    return optuna.distributions.FloatDistribution(float(args[0]), float(args[1]), log=kind == "logfloat")


def _flatten_space(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not (len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
            flat.update(_flatten_space(value, f"{name}."))
        elif isinstance(value, list):  # a (low, high) pair: one dimension per element
            flat.update({f"{name}.{i}": v for i, v in enumerate(value) if v is not None})
        elif value is not None:
            flat[name] = value
    return flat


def load_spec(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """A study's YAML (search space or grid) with overrides: `a.b=VALUE` replaces a.b whole (VALUE parsed as
    YAML, so `sizes={d32: {...}}` replaces every size), `a.b=null` deletes it."""
    path = resolve_path(str(path))
    if not path.is_file():
        raise ConfigError(f"study file {path} not found; the shipped ones are in studies/spaces/")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"study file {path}: top level must be a mapping")
    for item in overrides:
        (*parents, leaf), value = parse_override(item)
        node = tree
        for part in parents:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override {item!r}: {part} is not a mapping")
            node = node[part]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return tree


def load_space(path: str | Path, overrides: list[str] = ()) -> dict[str, optuna.distributions.BaseDistribution]:
    """A search space YAML, nested like the config, leaves {float|logfloat|int: [lo, hi]} or {choice: [...]};
    a list of two leaves searches the ends of a (low, high) pair. Overrides: `objective.passes={choice: [2]}`,
    `objective.passes=null` (drop a dimension)."""
    return {key: _distribution(key, leaf) for key, leaf in _flatten_space(load_spec(path, overrides)).items()}


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    """The config with dotted `params` set; `masking.enc_mask_scale.0` sets the first end of a pair."""
    raw = cfg.to_dict()
    for key, value in params.items():
        if key.startswith(FORBIDDEN):
            raise ConfigError(f"{key}: a study cannot vary this per trial (data, output, tracking, study and eval "
                              "settings are shared by all trials)")
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{key}: no such config key ({'.'.join(parts[:i + 1])})")
            if isinstance(node[part], tuple | list) and parts[i + 1].isdigit() and i + 2 == len(parts):
                node[part] = list(node[part])
            node = node[part]
        leaf = parts[-1]
        if isinstance(node, list):
            if int(leaf) >= len(node):
                raise ConfigError(f"{key}: the pair has elements 0 and 1 only")
            node[int(leaf)] = value
        elif not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"{key}: no such config key")
        else:
            node[leaf] = value
    return config_from_dict(raw)


def check_space(cfg: Config, space: dict[str, optuna.distributions.BaseDistribution]) -> None:
    """Every bound and choice, alone and with the other dimensions' lows / highs, gives a valid config."""
    lows, highs = {}, {}
    for key, dist in space.items():
        values = list(dist.choices) if isinstance(dist, optuna.distributions.CategoricalDistribution) \
            else [dist.low, dist.high]
        lows[key], highs[key] = values[0], values[-1]
        for value in values:
            try:
                apply_params(cfg, {key: value})
            except ConfigError as e:
                raise ConfigError(f"search space {key}: value {value!r} gives an invalid config: {e}") from None
    for key in [k for k in space if k.endswith(".0") and k[:-1] + "1" in space]:
        low_end, high_end = space[key], space[key[:-1] + "1"]
        if isinstance(low_end, optuna.distributions.CategoricalDistribution) or \
                isinstance(high_end, optuna.distributions.CategoricalDistribution) or low_end.high > high_end.low:
            raise ConfigError(f"search space {key[:-2]}: the low end's range must lie below the high end's "
                              f"(give {{float: [a, b]}} and {{float: [c, d]}} with b <= c), or a trial could draw "
                              "low > high")
    for corner in (lows, highs):
        try:
            apply_params(cfg, corner)
        except ConfigError as e:
            raise ConfigError(f"search space: the corner {corner} gives an invalid config: {e}") from None


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a grid study: dotted overrides, a label (its folder and run name) and a group
    (e.g. the recipe that several seeds share, for eval.compare)."""

    label: str
    overrides: dict[str, Any]
    group: str | None = None


# ---------------------------------------------------------------- the trial


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study receives (through the object store)."""

    cfg: Config
    prepared: PreparedRun
    quick: list[QuickTask]
    suite: SuiteConfig
    glue_dir: Path | None
    study_dir: Path
    parent_run_id: str


class ForwardEvalReports(TuneReportCallback):
    """Forwards to Tune only the reports of eval steps (they carry the quick probe, ASHA's metric);
    every report reaches MLflow anyway (ReportToMLflow)."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if QUICK_METRIC in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _evaluate(encoder: Path, glue_dir: Path | None, suite: SuiteConfig, out_dir: Path, name: str,
              group: str) -> pd.DataFrame:
    result = run_suite(encoder, glue_dir=glue_dir, cfg=suite, name=name, group=group)
    write_run(result.results, result.replicates, result.spectra, out_dir)
    return result.results


def run_trial(params: dict[str, Any], context: StudyContext) -> None:
    """Tune function trainable: pre-train (TorchTrainer inside), evaluate, report the final metrics."""
    start = time.time()
    trial_id = tune.get_context().get_trial_id()
    spec = TrialSpec(**params["trial"]) if "trial" in params else TrialSpec(trial_id, params, trial_id)
    cfg = apply_params(context.cfg, spec.overrides)
    uri, experiment, name = context.prepared.tracking_uri, cfg.tracking.experiment, cfg.study.name
    trial_dir = context.study_dir / "trials" / spec.label
    tags = {tracking.TRIAL_TAG: trial_id, "study": name, "label": spec.label, "group": spec.group or spec.label}
    existing = tracking.find_run(uri, experiment, {"mlflow.parentRunId": context.parent_run_id,
                                                   tracking.TRIAL_TAG: trial_id})
    with tracking.training_run(uri, experiment, f"{name}-{spec.label}", cfg.to_dict(), context.parent_run_id,
                               tags, run_id=existing) as run:
        tracking.log_params({f"trial.{k}": v for k, v in spec.overrides.items()})
        summary = train(cfg, context.prepared, run, f"trial-{spec.label}", trial_dir, context.study_dir / "train",
                        [ForwardEvalReports()], context.quick)
        if summary["outcome"] != "finished":
            raise TrialDiverged(f"trial {spec.label}: {summary['note']}")
        trained = time.time()
        # "DEFAULT": not inside the trial's placement group (Tune captures child tasks into it by default)
        options = {"num_cpus": cfg.eval.cpus, "num_gpus": 1 if cfg.train.use_gpu else 0,
                   "scheduling_strategy": "DEFAULT"}
        results = ray.get(ray.remote(_evaluate).options(**options).remote(
            Path(summary["encoder"]), context.glue_dir, context.suite, trial_dir / "eval", spec.label,
            spec.group or spec.label))
        final = {**result_metrics(results), **headline_metrics(results)}
        tracking.log_metrics(final)
        tracking.log_artifact(trial_dir / "eval", "eval")
        recorded = tracking.read_run(uri, run.run_id)["metrics"]
        wall = {"perf/trial_wall_s": time.time() - start, "perf/trial_train_wall_s": trained - start}
        tracking.log_metrics(wall)
        tune.report({**{k: v for k, v in recorded.items() if k.startswith(("train/", "val/", "probe/quick"))},
                     **final, **wall, "step": summary["steps"], "perf/train_time_s": recorded["perf/train_time_s"]})


# ---------------------------------------------------------------- the study


@dataclass
class StudyResult:
    study_dir: Path
    parent_run_id: str
    tracking_uri: str
    table: pd.DataFrame  # one row per trial: label, outcome, searched values, metrics
    wall_s: float


def check_metrics(cfg: Config) -> None:
    """The optimised metric(s) must be something a finished trial reports."""
    for metric in cfg.study.metric:
        parts = metric.split("/")
        headline = metric in ("probe/mean_score", "geom/mean_uniformity") or (
            parts[:2] == ["probe", "mean_score"] and len(parts) == 3 and parts[2] in cfg.eval.poolings)
        per_task = len(parts) == 4 and parts[0] in ("probe", "geom") and parts[1] in cfg.eval.tasks \
            and parts[2] in cfg.eval.poolings
        ok = metric.startswith(("train/", "val/")) or headline or per_task
        if not ok:
            raise ConfigError(f"study.metric={metric!r}: a finished trial reports probe/mean_score, "
                              "probe/mean_score/<pooling>, geom/mean_uniformity, probe|geom/<task>/<pooling>/<metric> "
                              f"for eval.tasks={list(cfg.eval.tasks)} x eval.poolings={list(cfg.eval.poolings)}, "
                              "and val/... or train/... metrics")


class Study:
    def __init__(self, context: StudyContext, space: dict | None, grid: list[TrialSpec] | None, resumed: bool):
        self.context, self.space, self.grid, self.resumed = context, space, grid, resumed

    @property
    def cfg(self) -> Config:
        return self.context.cfg

    def run(self) -> StudyResult:
        start = time.time()
        trainable = tune.with_parameters(run_trial, context=self.context)
        tuner = restore_tuner(self.context.study_dir, trainable) if self.resumed else None
        if tuner is None:
            closer = tracking.CloseStoppedTrials(self.context.prepared.tracking_uri, self.cfg.tracking.experiment,
                                                 self.context.parent_run_id, QUICK_METRIC)
            grid = None if self.grid is None else [dataclasses.asdict(t) for t in self.grid]
            tuner = build_tuner(self.cfg, trainable, self.context.study_dir, [closer], self.space, grid)
        else:
            print(f"[study] resuming {self.context.study_dir}: finished trials are kept", flush=True)
        tuner.fit()
        from harness.study_report import trial_table  # matplotlib and friends: only once there is a table

        table = trial_table(self.context.prepared.tracking_uri, self.context.parent_run_id, self.cfg, self.space)
        return StudyResult(self.context.study_dir, self.context.parent_run_id, self.context.prepared.tracking_uri,
                           table, time.time() - start)

    def report(self, result: StudyResult, sections: list[tuple[str, str]] = ()) -> Path:
        """Write report/ (summary table, best config, importances, plots, report.md) and log it to the parent."""
        from harness.study_report import write_report

        return write_report(result, self.cfg, self.space, list(sections))


def _fingerprint(cfg: Config, space: dict | None, grid: list[TrialSpec] | None) -> dict[str, Any]:
    what = cfg.to_dict()  # without what only shapes resources: a study may resume on another cluster
    for section, key in (("study", "max_concurrent"), ("train", "cpus_per_worker"), ("train", "torch_threads"),
                         ("eval", "cpus")):
        del what[section][key]
    return json.loads(json.dumps({"config": what, "space": {k: repr(v) for k, v in (space or {}).items()},
                                  "grid": [dataclasses.asdict(t) for t in grid or []]}, default=str))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: was {a!r}, now {b!r}"]


def warn_if_crowded(cfg: Config) -> None:
    """Concurrent trials whose workers leave the cluster less than one whole CPU starve Ray Data's file
    listing, and the trials wait forever. Only a warning: an autoscaling cluster may add nodes later."""
    cpus = ray.cluster_resources().get("CPU", 0.0)
    taken = cfg.study.max_concurrent * (cfg.train.num_workers * cfg.train.cpus_per_worker + 0.01)
    if cpus - taken < 1:
        print(f"[study] WARNING: {cfg.study.max_concurrent} concurrent trials take {taken:.2f} of the cluster's "
              f"{cpus:g} CPUs and leave less than one whole CPU for Ray Data's readers: unless the cluster "
              "scales up, trials will wait forever. Lower study.max_concurrent or train.cpus_per_worker.", flush=True)


@contextmanager
def open_study(cfg: Config, space: dict[str, optuna.distributions.BaseDistribution] | None = None,
               grid: list[TrialSpec] | None = None) -> Iterator[Study]:
    """Check everything cheap, prepare the data once, open (or reopen) the study's MLflow parent run."""
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
    glue_dir = Path(resolve_location(cfg.eval.glue_dir)) if cfg.eval.glue_dir else None
    suite = SuiteConfig(tasks=cfg.eval.tasks, poolings=cfg.eval.poolings, max_train=cfg.eval.max_train,
                        max_dev=cfg.eval.max_dev, n_boot=cfg.eval.n_boot, geometry_n=cfg.eval.geometry_n)
    try:
        preflight_tasks(glue_dir, suite, cfg.eval.quick_tasks)
    except ValueError as e:  # an unknown task or pooling name
        raise ConfigError(f"eval: {e}") from None

    study_dir = resolve_path(cfg.output_dir) / "studies" / cfg.study.name
    state_file = study_dir / "study.json"
    fingerprint = _fingerprint(cfg, space, grid)
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    if state is not None and state["fingerprint"] != fingerprint:
        diffs = _differences(state["fingerprint"], fingerprint)
        raise ConfigError(f"study {cfg.study.name!r} in {study_dir} was started with other settings ("
                          + "; ".join(diffs[:8]) + "). Resume it with its own settings, or start a new study "
                          "with study.name=<new name>.")
    try:
        prepared = prepare_run(cfg)
    except ValueError as e:  # e.g. a tokenizer larger than model.vocab_size, a checkpoint of another model
        raise ConfigError(str(e)) from None
    warn_if_crowded(cfg)
    quick = build_quick_probe(cfg.eval.quick_tasks, glue_dir, prepared.tokenizer,
                              cfg.eval.quick_train, cfg.eval.quick_dev, cfg.eval.quick_max_len)
    uri = prepared.tracking_uri
    with tracking.training_run(uri, cfg.tracking.experiment, cfg.study.name, cfg.to_dict(),
                               tags={"study": cfg.study.name, "kind": "study"},
                               run_id=state["parent_run_id"] if state else None) as parent:
        if state is None:
            study_dir.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"parent_run_id": parent.run_id, "fingerprint": fingerprint,
                                              "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
        context = StudyContext(prepared.cfg, prepared, quick, suite, glue_dir, study_dir, parent.run_id)
        yield Study(context, space, grid, resumed=state is not None)

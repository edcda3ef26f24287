"""Typed, frozen run configuration: YAML + dotted command-line overrides, validated before any work.

    cfg = load_config("studies/configs/small.yaml", ["optim.lr=1e-4", "objective.passes=1"])

Every error names the key, the value and what is allowed, e.g.
    masking.enc_mask_scale=(0.9, 0.5): min must be <= max
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from common.config import ConfigError, require
from eval.config import EvalConfig
from models.config import ModelConfig
from objectives import OBJECTIVES, get_objective
from objectives.config import MaskingConfig, ObjectiveConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "MaskingConfig", "ModelConfig", "ObjectiveConfig",
           "OptimConfig", "StudyConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "config_from_dict",
           "load_config", "override_config", "parse_override", "resolve_location", "resolve_path"]


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    batch_size: int = 32  # per worker
    max_steps: int = 1000
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "each must lie in [0, 1)")
        require(self.eps > 0, "eps", self.eps, "must be > 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        require(0 <= self.warmup_steps <= self.max_steps, "warmup_steps", self.warmup_steps,
                 f"must lie in [0, max_steps={self.max_steps}]")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "must lie in [0, 1]")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 disables)")


@dataclass(frozen=True)
class DataConfig:
    # A local dir of parquet shards in the HF `wikimedia/wikipedia` schema (id, url, title, text),
    # or "hf://wikimedia/wikipedia/20231101.en". Relative paths are resolved against the repo root.
    source: str = "../shared/data/wikipedia/enwiki-2015-excerpt"
    tokenizer: str = "../shared/data/tokenizers/bert-base-uncased"  # local dir or a Hub id
    seq_len: int = 128
    val_fraction: float = 0.01  # fraction of whole documents held out for validation
    max_documents: int | None = None  # cap for smoke runs and tests

    def __post_init__(self) -> None:
        require(self.seq_len >= 8, "seq_len", self.seq_len, "must be >= 8")
        require(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "must lie in (0, 1)")
        require(self.max_documents is None or self.max_documents >= 1, "max_documents", self.max_documents,
                 "must be >= 1 or null")


PLACEMENTS = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")  # Ray's placement group strategies
GPUS_PER_NODE = 8  # the cluster's p5.48xlarge (and p4d): a run of up to 8 GPU workers fits one node


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train scaling, logging, checkpointing and recovery."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # fractional is fine; leave CPUs for Ray Data (see README)
    torch_threads: int | None = None  # None: round(cpus_per_worker), at least 1
    log_every: int = 10  # steps between reports (the only host syncs of the loop)
    eval_every: int = 100  # steps between validation passes (0 disables)
    eval_batches: int = 8
    checkpoint_every: int = 100  # steps between checkpoints (0: only the final one)
    keep_checkpoints: int = 2
    max_failures: int = 2  # worker failures to recover from (each restarts from the last checkpoint)
    controller_failure_limit: int = 3  # Ray's default (-1) retries worker start-up forever
    compile: bool | None = None  # torch.compile the training module; None: on for CUDA, off on CPU
    # Upload checkpoints in the background from a local staging directory (Ray Train's ASYNC upload; the last one
    # is uploaded before the run returns); None: on for GPU runs, off on CPU (where storage is the local disk).
    async_checkpoint: bool | None = None
    # Ray's placement of the workers' bundles: STRICT_PACK, PACK, SPREAD, STRICT_SPREAD; None: STRICT_PACK for GPU
    # runs of at most GPUS_PER_NODE workers (one node, NVLink, no network), else PACK.
    placement: str | None = None
    peak_flops: float | None = None  # per worker, for MFU; None: known GPU peak, or a measured CPU matmul peak
    resume_from: str | None = None  # a checkpoint directory of an earlier run with the same model/objective
    # Run the loop in the calling process (the driver, or a study's trial), without Ray Train: no Train controller
    # and no worker processes to start (seconds of every run on a small machine). One worker only; harness.pretrain
    # then does what Train's controller does: reports to MLflow and Tune, keeps the checkpoints under the run's
    # storage, and restarts the loop from the last one after a failure (max_failures).
    in_process: bool = False

    def __post_init__(self) -> None:
        for name in ("num_workers", "log_every", "eval_batches", "keep_checkpoints"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("eval_every", "checkpoint_every", "max_failures"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        require(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", self.torch_threads,
                 "must be >= 1 or null")
        require(self.controller_failure_limit >= -1, "controller_failure_limit", self.controller_failure_limit,
                 "must be >= 0, or -1 for unlimited")
        require(self.peak_flops is None or self.peak_flops > 0, "peak_flops", self.peak_flops, "must be > 0 or null")
        require(self.placement in (None, *PLACEMENTS), "placement", self.placement,
                f"must be one of {list(PLACEMENTS)} or null")
        require(not self.in_process or self.num_workers == 1, "in_process", self.in_process,
                f"runs one worker, in the calling process (num_workers={self.num_workers}): set num_workers=1 "
                "or in_process=false")

    @property
    def checkpoint_async(self) -> bool:
        return self.async_checkpoint if self.async_checkpoint is not None else self.use_gpu

    @property
    def placement_strategy(self) -> str:
        if self.placement is not None:
            return self.placement
        return "STRICT_PACK" if self.use_gpu and self.num_workers <= GPUS_PER_NODE else "PACK"


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; default: sqlite:///<output_dir>/mlflow.db
    experiment: str = "predict-and-reconstruct"




@dataclass(frozen=True)
class StudyConfig:
    """A Ray Tune study: trials, what is optimised, and the early-stopping scheduler."""

    name: str = "study"  # the study's folder under <output_dir>/studies and its MLflow parent run
    num_samples: int = 8  # trials drawn by the searcher (grid studies run their grid instead)
    max_concurrent: int = 2
    metric: tuple[str, ...] = ("select/mean_score",)  # held-out TRAIN; two metrics: multi-objective (a Pareto front)
    mode: tuple[Literal["max", "min"], ...] = ("max",)
    scheduler: Literal["asha", "none"] = "asha"  # ASHA stops on the quick probe at every eval step
    grace_period: int | None = None  # steps before ASHA may stop a trial; None: 2 x train.eval_every
    reduction_factor: int = 2
    trial_failures: int = 0  # Tune retries of a trial that raised (worker failures: train.max_failures)

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "name", self.name, "must be a non-empty name without '/'")
        require(self.num_samples >= 1, "num_samples", self.num_samples, "must be >= 1")
        require(self.max_concurrent >= 1, "max_concurrent", self.max_concurrent, "must be >= 1")
        require(len(self.metric) == len(self.mode), "mode", self.mode,
                 f"needs one mode (max/min) per metric {list(self.metric)}")
        require(len(self.metric) <= 2, "metric", self.metric, "at most two metrics (multi-objective)")
        require(self.grace_period is None or self.grace_period >= 1, "grace_period", self.grace_period,
                 "must be >= 1 or null")
        require(self.reduction_factor >= 2, "reduction_factor", self.reduction_factor, "must be >= 2")
        require(self.trial_failures >= 0, "trial_failures", self.trial_failures, "must be >= 0")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    seed: int = 0
    output_dir: str = "outputs"

    def __post_init__(self) -> None:
        require(self.objective.name in OBJECTIVES, "objective.name", self.objective.name,
                f"must be one of {sorted(OBJECTIVES)}")
        require(self.data.seq_len <= self.model.max_position_embeddings, "data.seq_len", self.data.seq_len,
                 f"must be <= model.max_position_embeddings={self.model.max_position_embeddings}")
        if get_objective(self.objective.name).masks(self.objective).jepa:
            # Context must keep min_keep tokens after the target blocks are cut out of a full-length row.
            content = self.data.seq_len - 2
            require(self.masking.min_keep < content, "masking.min_keep", self.masking.min_keep,
                     f"must be < the content length seq_len - 2 = {content}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert YAML lists to tuples and ints to floats."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for arm in (a for a in get_args(tp) if a is not type(None)):
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        require(value in get_args(tp), key, value, f"must be one of {list(get_args(tp))}")
        return value
    if origin is tuple and get_args(tp)[1:] == (...,):  # tuple[X, ...]: a list, or one value
        items = value if isinstance(value, list | tuple) else [value]
        require(len(items) >= 1, key, value, "must name at least one value")
        return tuple(_coerce(v, get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(items))
    if origin is tuple:
        arms = get_args(tp)
        require(isinstance(value, list | tuple) and len(value) == len(arms), key, value,
                 f"must be a list of {len(arms)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, arms, strict=True)))
    if origin is dict:
        require(isinstance(value, dict), key, value, "must be a mapping")
        return value
    if dataclasses.is_dataclass(tp):
        require(isinstance(value, dict), key, value, f"must be a mapping of {tp.__name__} fields")
        return _build(tp, value, f"{key}.")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: must be a finite number") from None
        require(isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
                 key, value, "must be a finite number")
        return float(value)
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
        return value
    if tp is bool:
        require(isinstance(value, bool), key, value, "must be true or false")
        return value
    if tp is str:
        require(isinstance(value, str), key, value, "must be a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        require(key in names, f"{prefix}{key}", raw[key], f"unknown key; valid keys here: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names keys relative to its own section
        raise ConfigError(f"{prefix}{e}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """"optim.lr=1e-4" -> ("optim.lr", 1e-4): the dotted key and the value parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. optim.lr=1e-4")
    return key.strip(), yaml.safe_load(text)


def apply_overrides(tree: dict[str, Any], overrides: Mapping[str, Any] | Iterable[str], *,
                    existing_only: bool = False, null_deletes: bool = False) -> dict[str, Any]:
    """A copy of the nested mapping `tree` with each dotted key set to its value (a value replaces the key's
    value whole). The one override rule of the CLIs and study scripts (`key=value` strings, parsed as YAML),
    the study files (`null_deletes`: `a.b=null` removes a.b) and the trial parameters (`existing_only`: every
    key must already exist). A numeric last part indexes a pair: `masking.enc_mask_scale.0` sets its low end."""
    tree = copy.deepcopy(tree)
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        *parents, leaf = key.split(".")
        node = tree
        for i, part in enumerate(parents):
            where = ".".join(parents[:i + 1])
            if existing_only and part not in node:
                raise ConfigError(f"{key}: no such config key ({where})")
            child = node.setdefault(part, {})
            if isinstance(child, tuple | list) and i == len(parents) - 1 and leaf.isdigit():
                child = node[part] = list(child)
            elif not isinstance(child, dict):
                raise ConfigError(f"override {key}: {where} is not a mapping")
            node = child
        if isinstance(node, list):
            require(int(leaf) < len(node), key, value, f"the pair has elements 0 to {len(node) - 1} only")
            node[int(leaf)] = value
        elif existing_only and leaf not in node:
            raise ConfigError(f"{key}: no such config key")
        elif value is None and null_deletes:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return tree


def config_from_dict(raw: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] = ()) -> Config:
    """A validated Config from a nested mapping (YAML, or Config.to_dict()) and dotted overrides."""
    return _build(Config, apply_overrides(raw, overrides))


def override_config(cfg: Config, params: Mapping[str, Any]) -> Config:
    """`cfg` with dotted `params` set (each key must exist; `masking.enc_mask_scale.0` sets a pair's low end),
    validated again: a study's trial parameters."""
    return _build(Config, apply_overrides(cfg.to_dict(), params, existing_only=True))


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; configs live in studies/configs/ (tiny, small, ...)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}:{line}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(raw, overrides)


def resolve_location(location: str) -> str:
    """Local paths (absolute, ./, ../, ~, $VAR) resolved against the repo root; hf://... and Hub ids as they are."""
    if location.startswith(("/", ".", "~", "$")):
        return str(resolve_path(location))
    return location


def resolve_path(path: str) -> Path:
    """Expand ~ and $VARS; resolve a relative path against the repo root (not the cwd)."""
    expanded = Path(os.path.expandvars(path)).expanduser()
    return expanded if expanded.is_absolute() else (REPO_ROOT / expanded).resolve()

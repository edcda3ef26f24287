"""Typed, frozen run configuration: YAML + dotted command-line overrides, validated before any work.

    cfg = load_config("studies/configs/small.yaml", ["optim.lr=1e-4", "objective.passes=1"])

Every error names the key, the value and what is allowed, e.g.
    masking.enc_mask_scale=(0.9, 0.5): min must be <= max
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {allowed}")


def _check_scale(key: str, value: tuple[float, float]) -> None:
    lo, hi = value
    _require(0 < lo < 1 and 0 < hi < 1, key, value, "both ends must lie in the open interval (0, 1)")
    _require(lo <= hi, key, value, "min must be <= max")


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["bert"] = "bert"  # the registry in models/encoder.py leaves room for e.g. ModernBERT
    vocab_size: int = 30522
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    dropout: float = 0.1  # hidden-state dropout (BERT's hidden_dropout_prob)
    attention_dropout: float | None = None  # on attention probabilities; None: = dropout. > 0 makes CPU SDPA
    # fall back from its flash kernel to the math path (see BENCHMARKS.md)
    tie_mlm_head: bool = True  # MLM decoder shares the input embedding matrix
    predictor_depth: int = 4
    predictor_width: int = 128
    predictor_heads: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "predictor_depth", "predictor_width", "predictor_heads"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                 f"must be divisible by num_heads={self.num_heads}")
        _require(self.predictor_width % self.predictor_heads == 0, "predictor_width", self.predictor_width,
                 f"must be divisible by predictor_heads={self.predictor_heads}")
        _require(0 <= self.dropout < 1, "dropout", self.dropout, "must lie in [0, 1)")
        _require(self.attention_dropout is None or 0 <= self.attention_dropout < 1, "attention_dropout",
                 self.attention_dropout, "must lie in [0, 1) or be null")


@dataclass(frozen=True)
class MaskingConfig:
    mlm_probability: float = 0.15  # of non-special, non-padding tokens
    mask_token_fraction: float = 0.8  # of the selected: replaced by [MASK]
    random_token_fraction: float = 0.1  # of the selected: replaced by a random token (the rest unchanged)
    enc_mask_scale: tuple[float, float] = (0.65, 0.85)  # context block, x the real length
    pred_mask_scale: tuple[float, float] = (0.10, 0.25)  # each target block, x the real length
    num_pred_masks: int = 2
    min_keep: int = 4  # fewest context tokens a sample may keep

    def __post_init__(self) -> None:
        _require(0 < self.mlm_probability < 1, "mlm_probability", self.mlm_probability, "must lie in (0, 1)")
        for name in ("mask_token_fraction", "random_token_fraction"):
            _require(0 <= getattr(self, name) <= 1, name, getattr(self, name), "must lie in [0, 1]")
        _require(self.mask_token_fraction + self.random_token_fraction <= 1, "random_token_fraction",
                 self.random_token_fraction, "mask_token_fraction + random_token_fraction must be <= 1")
        _check_scale("enc_mask_scale", self.enc_mask_scale)
        _check_scale("pred_mask_scale", self.pred_mask_scale)
        _require(self.num_pred_masks >= 1, "num_pred_masks", self.num_pred_masks, "must be >= 1")
        _require(self.min_keep >= 1, "min_keep", self.min_keep, "must be >= 1")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "hybrid"  # a key of objectives.OBJECTIVES: mlm | jepa | hybrid
    jepa_distance: Literal["cosine", "smooth_l1", "l2"] = "cosine"
    weighting: Literal["learned", "fixed", "uncertainty"] = "learned"
    lambda_init: float = 0.5  # λ weights L_JEPA; (1 - λ) weights L_MLM
    passes: Literal[1, 2] = 2
    ema_start: float = 0.996  # EMA momentum of the target encoder, linear start -> end over the run
    ema_end: float = 1.0

    def __post_init__(self) -> None:
        from objectives import OBJECTIVES  # late import: objectives imports this module

        _require(self.name in OBJECTIVES, "name", self.name, f"must be one of {sorted(OBJECTIVES)}")
        _require(0 < self.lambda_init < 1, "lambda_init", self.lambda_init, "must lie in (0, 1)")
        for name in ("ema_start", "ema_end"):
            _require(0 <= getattr(self, name) <= 1, name, getattr(self, name), "must lie in [0, 1]")


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
        _require(self.lr > 0, "lr", self.lr, "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "each must lie in [0, 1)")
        _require(self.eps > 0, "eps", self.eps, "must be > 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        _require(0 <= self.warmup_steps <= self.max_steps, "warmup_steps", self.warmup_steps,
                 f"must lie in [0, max_steps={self.max_steps}]")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "must lie in [0, 1]")
        _require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 disables)")


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
        _require(self.seq_len >= 8, "seq_len", self.seq_len, "must be >= 8")
        _require(0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "must lie in (0, 1)")
        _require(self.max_documents is None or self.max_documents >= 1, "max_documents", self.max_documents,
                 "must be >= 1 or null")


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
    max_failures: int = 0  # worker failures to recover from (restores the last checkpoint)
    controller_failure_limit: int = 3  # Ray's default (-1) retries worker start-up forever
    compile: bool = False  # torch.compile the training module
    peak_flops: float | None = None  # per worker, for MFU; None: known GPU peak, or a measured CPU matmul peak
    resume_from: str | None = None  # a checkpoint directory of an earlier run with the same model/objective
    fail_at_step: int | None = None  # TEST ONLY: the last worker raises once at this step

    def __post_init__(self) -> None:
        for name in ("num_workers", "log_every", "eval_batches", "keep_checkpoints"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("eval_every", "checkpoint_every", "max_failures"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        _require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        _require(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", self.torch_threads,
                 "must be >= 1 or null")
        _require(self.controller_failure_limit >= -1, "controller_failure_limit", self.controller_failure_limit,
                 "must be >= 0, or -1 for unlimited")
        _require(self.peak_flops is None or self.peak_flops > 0, "peak_flops", self.peak_flops, "must be > 0 or null")


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; default: sqlite:///<output_dir>/mlflow.db
    experiment: str = "predict-and-reconstruct"


@dataclass(frozen=True)
class EvalConfig:
    """The quick probe reported during pre-training (what ASHA stops on) and the suite run after it.
    Task and pooling names are checked against eval's registries by the study before any trial starts."""

    glue_dir: str | None = "../shared/data/glue"  # GLUE layout; null reads nyu-mll/glue from the Hub
    quick_tasks: tuple[str, ...] = ("sst2", "stsb")  # probed with mean pooling at every train.eval_every
    quick_train: int = 1000  # seeded subsample of each quick task's train split
    quick_dev: int = 500  # seeded subsample of each quick task's dev split
    quick_max_len: int = 64
    tasks: tuple[str, ...] = ("sst2", "mrpc", "mnli", "cola", "stsb")  # the full suite for trials that finish
    poolings: tuple[str, ...] = ("mean", "max", "weighted", "attention")
    max_train: int | None = 5000  # seeded train subsample per task (None: all)
    max_dev: int | None = None
    n_boot: int = 200
    geometry_n: int = 1000
    cpus: float = 1.0  # CPUs of the Ray task that runs the suite (plus a GPU when train.use_gpu)

    def __post_init__(self) -> None:
        for name in ("quick_train", "quick_dev", "quick_max_len", "n_boot", "geometry_n"):
            _require(getattr(self, name) >= 8, name, getattr(self, name), "must be >= 8")
        for name in ("max_train", "max_dev"):
            _require(getattr(self, name) is None or getattr(self, name) >= 8, name, getattr(self, name),
                     "must be >= 8 or null")
        _require(self.cpus > 0, "cpus", self.cpus, "must be > 0")


@dataclass(frozen=True)
class StudyConfig:
    """A Ray Tune study: trials, what is optimised, and the early-stopping scheduler."""

    name: str = "study"  # the study's folder under <output_dir>/studies and its MLflow parent run
    num_samples: int = 8  # trials drawn by the searcher (grid studies run their grid instead)
    max_concurrent: int = 2
    metric: tuple[str, ...] = ("probe/mean_score",)  # two metrics: multi-objective (a Pareto front)
    mode: tuple[Literal["max", "min"], ...] = ("max",)
    scheduler: Literal["asha", "none"] = "asha"  # ASHA stops on the quick probe at every eval step
    grace_period: int | None = None  # steps before ASHA may stop a trial; None: 2 x train.eval_every
    reduction_factor: int = 2
    trial_failures: int = 0  # Tune retries of a trial that raised (worker failures: train.max_failures)

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "name", self.name, "must be a non-empty name without '/'")
        _require(self.num_samples >= 1, "num_samples", self.num_samples, "must be >= 1")
        _require(self.max_concurrent >= 1, "max_concurrent", self.max_concurrent, "must be >= 1")
        _require(len(self.metric) == len(self.mode), "mode", self.mode,
                 f"needs one mode (max/min) per metric {list(self.metric)}")
        _require(len(self.metric) <= 2, "metric", self.metric, "at most two metrics (multi-objective)")
        _require(self.grace_period is None or self.grace_period >= 1, "grace_period", self.grace_period,
                 "must be >= 1 or null")
        _require(self.reduction_factor >= 2, "reduction_factor", self.reduction_factor, "must be >= 2")
        _require(self.trial_failures >= 0, "trial_failures", self.trial_failures, "must be >= 0")


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
        _require(self.data.seq_len <= self.model.max_position_embeddings, "data.seq_len", self.data.seq_len,
                 f"must be <= model.max_position_embeddings={self.model.max_position_embeddings}")
        if self.objective.name != "mlm":
            # Context must keep min_keep tokens after the target blocks are cut out of a full-length row.
            content = self.data.seq_len - 2
            _require(self.masking.min_keep < content, "masking.min_keep", self.masking.min_keep,
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
        _require(value in get_args(tp), key, value, f"must be one of {list(get_args(tp))}")
        return value
    if origin is tuple and get_args(tp)[1:] == (...,):  # tuple[X, ...]: a list, or one value
        items = value if isinstance(value, list | tuple) else [value]
        _require(len(items) >= 1, key, value, "must name at least one value")
        return tuple(_coerce(v, get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(items))
    if origin is tuple:
        arms = get_args(tp)
        _require(isinstance(value, list | tuple) and len(value) == len(arms), key, value,
                 f"must be a list of {len(arms)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, arms, strict=True)))
    if origin is dict:
        _require(isinstance(value, dict), key, value, "must be a mapping")
        return value
    if dataclasses.is_dataclass(tp):
        _require(isinstance(value, dict), key, value, f"must be a mapping of {tp.__name__} fields")
        return _build(tp, value, f"{key}.")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: must be a finite number") from None
        _require(isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
                 key, value, "must be a finite number")
        return float(value)
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
        return value
    if tp is bool:
        _require(isinstance(value, bool), key, value, "must be true or false")
        return value
    if tp is str:
        _require(isinstance(value, str), key, value, "must be a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        _require(key in names, f"{prefix}{key}", raw[key], f"unknown key; valid keys here: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names keys relative to its own section
        raise ConfigError(f"{prefix}{e}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """"optim.lr=1e-4" -> (["optim", "lr"], 1e-4): the dotted path and the value parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. optim.lr=1e-4")
    return key.strip().split("."), yaml.safe_load(text)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["optim.lr=1e-4", "masking.enc_mask_scale=[0.7,0.9]"] -> nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        (*parents, leaf), value = parse_override(item)
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    return _build(Config, _merge(raw, parse_overrides(overrides or [])))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; configs live in studies/configs/ (tiny, small, ...)")
    raw = yaml.safe_load(path.read_text()) or {}
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

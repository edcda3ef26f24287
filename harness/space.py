"""A study's YAML files and trial parameters: search spaces, grid specs, and a trial's config.

A search space is nested like the config, with one distribution per leaf:

    objective:
      lambda_init: {float: [0.1, 0.9]}         # also {logfloat: [lo, hi]}, {int: [lo, hi]}, {choice: [a, b]}
    masking:
      enc_mask_scale: [{float: [0.55, 0.75]}, {float: [0.75, 0.95]}]   # both ends of a (low, high) pair

`load_space` flattens it to {dotted key: Optuna distribution} (`masking.enc_mask_scale.0` is a pair's
low end); `apply_params` sets such dotted keys on a base config, the one rule for every trial.
A grid study's arms are matched on equal steps or on equal model FLOPs by `matched_steps`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml

from harness.config import Config, ConfigError, apply_overrides, override_config, resolve_path
from objectives import train_flops_per_step

Space = dict[str, optuna.distributions.BaseDistribution]  # dotted config key -> distribution

DISTRIBUTIONS = ("float", "logfloat", "int", "choice")
FORBIDDEN = ("data.", "output_dir", "tracking.", "study.", "eval.")  # shared by all trials of a study


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


def _is_leaf(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _flatten_space(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"masking": {"enc_mask_scale": [a, b]}} -> {"masking.enc_mask_scale.0": a, "masking.enc_mask_scale.1": b};
    null leaves (dropped dimensions) are left out."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _is_leaf(value):
            flat.update(_flatten_space(value, f"{name}."))
        elif isinstance(value, list):  # a (low, high) pair: one dimension per element
            flat.update({f"{name}.{i}": v for i, v in enumerate(value) if v is not None})
        elif value is not None:
            flat[name] = value
    return flat


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A study's YAML (search space or grid) with `key=VALUE` overrides: VALUE (parsed as YAML) replaces the
    key whole (`sizes={d32: {...}}` replaces every size), `a.b=null` deletes a.b, and a numeric last part
    sets one element of a list (`masking.enc_mask_scale.0={float: [0.5, 0.6]}`)."""
    path = resolve_path(str(path))
    if not path.is_file():
        raise ConfigError(f"study file {path} not found; the shipped ones are in studies/spaces/")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"study file {path}: top level must be a mapping")
    return apply_overrides(tree, overrides, null_deletes=True)


def load_space(path: str | Path, overrides: Iterable[str] = ()) -> Space:
    """A search space YAML (see the module doc) as {dotted key: distribution}. Overrides:
    `objective.passes={choice: [2]}`, `objective.passes=null` (drop a dimension)."""
    return {key: _distribution(key, leaf) for key, leaf in _flatten_space(load_spec(path, overrides)).items()}


def apply_params(cfg: Config, params: Mapping[str, Any]) -> Config:
    """`cfg` with a trial's dotted `params` set and validated; `masking.enc_mask_scale.0` sets a pair's low end.
    Data, output, tracking, study and eval settings are the study's, never a trial's."""
    for key in params:
        if key.startswith(FORBIDDEN):
            raise ConfigError(f"{key}: a study cannot vary this per trial (data, output, tracking, study and eval "
                              "settings are shared by all trials)")
    return override_config(cfg, params)


def check_space(cfg: Config, space: Space) -> None:
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


def matched_steps(cfg: Config, arms: Mapping[str, Mapping[str, Any]], match: str,
                  reference: str) -> list[dict[str, Any]]:
    """Steps of each arm ({name: dotted overrides}) of a grid study: `match: steps` gives every arm the base
    config's optim.max_steps; `match: flops` gives every arm the model-FLOPs budget of the `reference` arm at
    those steps (objectives.train_flops_per_step; warmup scaled alike). One row per arm: arm, steps, warmup,
    GFLOP/step, total PFLOP."""
    if match not in ("steps", "flops"):
        raise ConfigError(f"spec: match={match!r}: must be steps or flops")
    if reference not in arms:
        raise ConfigError(f"spec: reference={reference!r}: must be one of the arms {list(arms)}")
    steps, warmup = cfg.optim.max_steps, cfg.optim.warmup_steps
    flops = {arm: train_flops_per_step(apply_params(cfg, overrides)) for arm, overrides in arms.items()}
    rows = []
    for arm in arms:
        n = steps if match == "steps" else max(1, round(steps * flops[reference] / flops[arm]))
        rows.append({"arm": arm, "steps": n, "warmup": min(n, round(warmup * n / steps)),
                     "GFLOP/step": flops[arm] / 1e9, "total PFLOP": n * flops[arm] / 1e15})
    return rows

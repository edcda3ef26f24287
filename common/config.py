"""The vocabulary of config validation, shared by every config section (models, objectives, eval, harness).

Each section is a frozen dataclass beside what it configures; its __post_init__ checks its own values with
`require`, naming the key relative to the section (harness.config prefixes the section's name).
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError("key=value: allowed") unless ok."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {allowed}")


def check_unit_range(key: str, value: tuple[float, float]) -> None:
    """A (low, high) pair inside (0, 1) with low <= high (e.g. a mask scale)."""
    lo, hi = value
    require(0 < lo < 1 and 0 < hi < 1, key, value, "both ends must lie in the open interval (0, 1)")
    require(lo <= hi, key, value, "min must be <= max")

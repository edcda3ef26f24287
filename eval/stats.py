"""Bootstrap confidence intervals, paired encoder comparisons with Holm correction, seed aggregation.

Resamples are drawn from a generator seeded by (seed, n, task, purpose) only, never by the encoder:
two encoders scored on the same examples get the same resamples, so the difference of their
replicate values is a paired bootstrap of the difference. `eval.run` stores the replicates
(replicates.parquet) beside its results table, which is all that a later comparison needs.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pandas as pd
from scipy.stats import norm

KEYS = ["task", "pooling", "family", "metric"]


def bootstrap_indices(n: int, n_boot: int, seed: int, *keys: str) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement; identical for every encoder given equal keys."""
    rng = np.random.default_rng([seed, n, *(zlib.crc32(k.encode()) for k in keys)])
    return rng.integers(0, n, size=(n_boot, n))


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(n_boot, n) multiplicity of each original example in each resample."""
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)


def percentile_ci(replicates: np.ndarray, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the replicates, shifted so that they are centred on the estimate.

    Resampling with replacement duplicates points, which biases some statistics (spectrum
    metrics drop: a resample has only ~63% distinct points). The shift removes that bias and
    keeps the bootstrap's spread; for unbiased statistics it changes next to nothing.
    """
    tail = 100 * (1 - level) / 2
    if np.all(np.isnan(replicates)) or np.isnan(estimate):
        return float("nan"), float("nan")
    low, high = np.nanpercentile(replicates, [tail, 100 - tail]) + (estimate - np.nanmean(replicates))
    return float(low), float(high)


def paired_difference(value_a: float, value_b: float, reps_a: np.ndarray, reps_b: np.ndarray) -> dict:
    """Difference a - b, its percentile CI, and a two-sided p-value from its bootstrap standard error.

    The normal (Wald) p-value is used instead of counting resamples because a Holm correction
    over hundreds of tests needs p-values far below 1 / n_boot.
    """
    diff = value_a - value_b
    d = reps_a - reps_b
    se = float(np.nanstd(d, ddof=1)) if np.sum(~np.isnan(d)) > 1 else float("nan")
    if se > 0:
        p = float(2 * norm.sf(abs(diff) / se))
    else:  # identical replicates: no evidence unless the values themselves differ
        p = 1.0 if diff == 0 or np.isnan(diff) else 0.0
    low, high = percentile_ci(d, diff)
    return {"diff": diff, "ci_low": low, "ci_high": high, "se": se, "p_value": p}


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, made monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate(np.minimum((m - np.arange(m)) * p[order], 1.0))
    out = np.empty(m)
    out[order] = adjusted
    return out


def compare(results: pd.DataFrame, replicates: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Paired tests for every encoder pair x task x pooling x metric, Holm-corrected over all of them.

    Encoders of the same group (pretraining seeds of one recipe) are not tested against each
    other unless there is only one group.
    """
    groups = results.groupby("encoder", sort=False)["group"].first()
    pairs = [
        (a, b) for a, b in itertools.combinations(groups.index, 2)
        if groups[a] != groups[b] or groups.nunique() == 1
    ]
    reps = replicates.set_index(["encoder", *KEYS])
    values = results.set_index(["encoder", *KEYS])
    rows = []
    for a, b in pairs:
        shared = values.loc[a].index.intersection(values.loc[b].index)
        for key in shared:
            ra, rb = reps.loc[(a, *key)], reps.loc[(b, *key)]
            if ra["sample_key"] != rb["sample_key"]:
                continue  # different examples or resamples: not a paired comparison
            va, vb = values.loc[(a, *key), "value"], values.loc[(b, *key), "value"]
            test = paired_difference(va, vb, np.asarray(ra["replicates"]), np.asarray(rb["replicates"]))
            rows.append({"encoder_a": a, "encoder_b": b, **dict(zip(KEYS, key, strict=True)),
                         "value_a": va, "value_b": vb, **test})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p_value"].to_numpy())
    out["significant"] = out["p_holm"] < alpha
    return out


def aggregate_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) of each value over the encoders of a group, e.g. pretraining seeds."""
    agg = results.groupby(["group", *KEYS], sort=False)["value"].agg(["mean", "std", "count"])
    return agg.rename(columns={"count": "n_encoders"}).reset_index()

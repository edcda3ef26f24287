"""Bootstrap confidence intervals, tests, seed aggregation.

Two kinds of tests, for two different questions:
- `paired_example_tests` (`eval.compare`'s paired_example_tests.csv): for ONE pair of encoders, is a number different
  on these dev examples? A paired bootstrap over the dev examples (resamples seeded by (seed, n, task, purpose), never
  by the encoder, so the difference of two encoders' replicate values is a paired bootstrap of the difference). It
  says nothing about pre-training seeds, so it is NOT a test between objectives: two seeds of one objective differ
  "significantly" on it as often as two objectives do.
- `seed_tests`: between two ARMS (objectives, recipes), over pre-training seeds: per-seed values of each arm, Welch's
  t-test and an exact permutation test, Holm-corrected over the family. This is the test between objectives.

`eval.run` stores the bootstrap replicates (replicates.parquet) beside its results table, which is all that a later
paired comparison needs.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.stats import norm

KEYS = ["task", "pooling", "family", "metric", "protocol"]
PAIRED_EXAMPLE_TEST = ("paired bootstrap over dev examples, within one encoder pair (not a test between "
                       "objectives: see eval.stats.seed_tests)")
WELCH = "Welch's t-test over per-seed values (scipy.stats.ttest_ind, equal_var=False)"
PERMUTATION = ("permutation test of the difference of means over per-seed values (scipy.stats.permutation_test, "
               "independent; exact: all relabelings when C(n_a + n_b, n_a) <= max_exact)")


@dataclass
class Measure:
    """One reported number: its value, its bootstrap replicates (may be empty: no CI), n and a note."""

    value: float
    replicates: np.ndarray
    n: int
    note: str = ""


def average_draws(draws: list[dict[str, Measure]], note: str) -> dict[str, Measure]:
    """Metrics measured once per random draw (the reference's untrained attention poolers) -> per metric the mean over
    draws (value and, resample by resample, replicates) plus `<metric>_draw_std`: the std (ddof 1) over draws, shown
    without a CI (no replicates). A single draw is returned unchanged."""
    if len(draws) == 1:
        return draws[0]
    out: dict[str, Measure] = {}
    for metric in draws[0]:
        ms = [d[metric] for d in draws if metric in d]
        values = np.array([m.value for m in ms], dtype=float)
        sizes = {len(m.replicates) for m in ms}
        reps = np.stack([m.replicates for m in ms]) if len(sizes) == 1 else np.empty((len(ms), 0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = float(np.nanmean(values)), float(np.nanstd(values, ddof=1))
            rep_mean = np.nanmean(reps, 0)
        notes = [n for n in dict.fromkeys(m.note for m in ms) if n]
        joined = "; ".join([f"mean of {len(ms)} {note} (std over draws {std:.4g}: {metric}_draw_std)", *notes])
        out[metric] = Measure(mean, rep_mean, ms[0].n, joined)
        out[f"{metric}_draw_std"] = Measure(std, np.array([]), ms[0].n, f"std (ddof 1) over {len(ms)} {note}")
    return out


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
    No replicates (or only NaN): no interval (NaN, NaN).
    """
    tail = 100 * (1 - level) / 2
    replicates = np.asarray(replicates, dtype=float)
    if replicates.size == 0 or np.all(np.isnan(replicates)) or np.isnan(estimate):
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


def _holm_nan(p: np.ndarray) -> np.ndarray:
    """Holm over the finite p-values only; NaN (no test possible) stays NaN and is not counted."""
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = holm(p[ok])
    return out


def _with_protocol(df: pd.DataFrame) -> pd.DataFrame:
    """Tables written before the protocol column existed hold harness rows."""
    return df if "protocol" in df.columns else df.assign(protocol="harness")


def paired_example_tests(results: pd.DataFrame, replicates: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Within-encoder-pair tests over dev examples: a paired bootstrap for every encoder pair x task x pooling x
    family x metric x protocol, Holm-corrected over all of them (column `test` names it).

    NOT a test between objectives (use `seed_tests` over pre-training seeds): it treats the encoders as fixed and
    only the dev examples as random. Encoders of the same group (pretraining seeds of one recipe) are not tested
    against each other unless there is only one group. Rows without replicates (no CI) are not tested.
    """
    results, replicates = _with_protocol(results), _with_protocol(replicates)
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
            if (a, *key) not in reps.index or (b, *key) not in reps.index:
                continue
            ra, rb = reps.loc[(a, *key)], reps.loc[(b, *key)]
            if ra["sample_key"] != rb["sample_key"] or len(ra["replicates"]) == 0:
                continue  # different examples or resamples (or none): not a paired comparison
            va, vb = values.loc[(a, *key), "value"], values.loc[(b, *key), "value"]
            test = paired_difference(va, vb, np.asarray(ra["replicates"]), np.asarray(rb["replicates"]))
            rows.append({"encoder_a": a, "encoder_b": b, **dict(zip(KEYS, key, strict=True)),
                         "value_a": va, "value_b": vb, **test})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p_value"].to_numpy())
    out["significant"] = out["p_holm"] < alpha
    out["test"] = PAIRED_EXAMPLE_TEST
    return out


compare = paired_example_tests  # the former name, kept for existing callers; the outputs say what it is


def aggregate_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) of each value over the encoders of a group, e.g. pretraining seeds."""
    agg = _with_protocol(results).groupby(["group", *KEYS], sort=False)["value"].agg(["mean", "std", "count"])
    return agg.rename(columns={"count": "n_encoders"}).reset_index()


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def seed_tests(
    table: pd.DataFrame,
    arm_a: str,
    arm_b: str,
    alpha: float = 0.05,
    holm_on: str = "welch",
    max_exact: int = 200_000,
    seed: int = 0,
) -> pd.DataFrame:
    """The test between two arms (objectives, recipes) over pre-training seeds.

    `table`: one row per (arm, seed, task, pooling, metric, protocol) with its `value`; an optional `family` column
    is kept apart too. Per task x pooling x metric x protocol (x family) the output has each arm's mean, std (ddof 1)
    and n over seeds; diff = mean_a - mean_b with its 95% Welch-Satterthwaite interval (diff_ci_low, diff_ci_high);
    p_welch, Welch's two-sided t-test (scipy.stats.ttest_ind, equal_var=False); p_permutation, the two-sided
    permutation test of the difference of means (scipy.stats.permutation_test, independent samples), exact over all
    C(n_a + n_b, n_a) relabelings when that number is <= max_exact (else Monte Carlo with max_exact resamples seeded
    by `seed`; column permutation_exact). Both are NaN below two seeds in an arm.

    Holm: p_welch_holm and p_permutation_holm correct each over the whole family of rows; p_holm is the one named by
    `holm_on` ("welch" by default: the exact permutation test cannot go below 2 / C(2K, K) with K seeds per arm, 0.1
    for K = 3 and 0.029 for K = 4, so with few seeds it can never be significant; "permutation" makes the
    assumption-free test decide), and significant = p_holm < alpha. Columns `test` and `holm_on` say so in the output.
    """
    if holm_on not in ("permutation", "welch"):
        raise ValueError(f"holm_on={holm_on!r}: choose 'permutation' or 'welch'")
    keys = ["task", "pooling", "metric", "protocol"] + (["family"] if "family" in table.columns else [])
    rows = []
    data = table[table["arm"].isin([arm_a, arm_b])]
    for key, cell in data.groupby(keys, sort=False):
        a = cell.loc[cell["arm"] == arm_a, "value"].to_numpy(float)
        b = cell.loc[cell["arm"] == arm_b, "value"].to_numpy(float)
        if len(a) == 0 or len(b) == 0:
            continue
        row = dict(zip(keys, key, strict=True))
        row.update(arm_a=arm_a, arm_b=arm_b, mean_a=a.mean(), std_a=a.std(ddof=1) if len(a) > 1 else math.nan,
                   n_a=len(a), mean_b=b.mean(), std_b=b.std(ddof=1) if len(b) > 1 else math.nan, n_b=len(b),
                   diff=a.mean() - b.mean())
        row["p_welch"], row["diff_ci_low"], row["diff_ci_high"] = _welch(a, b)
        row["p_permutation"], row["permutation_exact"] = _permutation(a, b, max_exact, seed)
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_welch_holm"] = _holm_nan(out["p_welch"].to_numpy(float))
    out["p_permutation_holm"] = _holm_nan(out["p_permutation"].to_numpy(float))
    column = f"p_{holm_on}"
    out["p_holm"] = out[f"{column}_holm"]
    out["significant"] = out["p_holm"] < alpha
    out["holm_on"] = column
    out["test"] = f"{WELCH}; {PERMUTATION}; p_holm: Holm over all rows on {column}"
    return out


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(p-value, 95% interval of the difference of means) of Welch's t-test; NaN below two seeds in an arm."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    diff = a.mean() - b.mean()
    if a.var(ddof=1) + b.var(ddof=1) == 0:  # no spread at all: the t statistic is undefined
        return (1.0 if diff == 0 else 0.0), diff, diff
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return float(res.pvalue), float(ci.low), float(ci.high)


def _permutation(a: np.ndarray, b: np.ndarray, max_exact: int, seed: int) -> tuple[float, bool]:
    exact = math.comb(len(a) + len(b), len(a)) <= max_exact
    if len(a) < 2 or len(b) < 2:  # scipy needs two observations per arm
        return math.nan, exact
    res = sps.permutation_test((a, b), _mean_difference, permutation_type="independent", vectorized=True,
                               alternative="two-sided", n_resamples=max_exact if not exact else max_exact + 1,
                               rng=np.random.default_rng(seed))
    return float(res.pvalue), exact

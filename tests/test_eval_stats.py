"""Probe scores against sklearn / scipy, bootstrap and within-pair tests, Holm, seed aggregation, the seed-level test
between arms against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, permutation_test, spearmanr, ttest_ind
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from eval import scores, stats


@pytest.mark.parametrize("seed", range(4))
def test_classification_scores_match_sklearn(seed: int):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    p[:150] = y[:150]  # better than chance
    assert scores.accuracy(y, p) == pytest.approx(accuracy_score(y, p))
    assert scores.f1(y, p) == pytest.approx(f1_score(y, p))
    assert scores.mcc(y, p) == pytest.approx(matthews_corrcoef(y, p))
    y3, p3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert scores.mcc(y3, p3) == pytest.approx(matthews_corrcoef(y3, p3))


def test_degenerate_scores_follow_sklearn():
    y, p = np.array([0, 1, 0, 1]), np.zeros(4, dtype=int)
    assert scores.mcc(y, p) == matthews_corrcoef(y, p) == 0.0
    assert scores.f1(y, p) == f1_score(y, p, zero_division=0) == 0.0


def test_correlations_match_scipy_including_ties():
    rng = np.random.default_rng(7)
    y = np.round(rng.uniform(0, 5, 400) * 2) / 2  # STS-B-like scores with many ties
    p = y + rng.standard_normal(400)
    assert scores.pearson(y, p) == pytest.approx(pearsonr(y, p)[0])
    assert scores.spearman(y, p) == pytest.approx(spearmanr(y, p)[0])


def test_average_ranks_match_scipy_with_ties_nans_and_replicates():
    from scipy.stats import rankdata

    rng = np.random.default_rng(10)
    tied = rng.integers(0, 6, (5, 40)).astype(float)  # many ties in every row
    tied[3, 7] = np.nan
    for x in (tied, tied[0], rng.standard_normal(33), np.zeros(4), np.array([2.0])):
        np.testing.assert_array_equal(scores.average_ranks(x), rankdata(x, axis=-1))


def test_scores_are_vectorised_over_bootstrap_replicates():
    rng = np.random.default_rng(8)
    y, p = rng.integers(0, 2, 100), rng.integers(0, 2, 100)
    ys, ps = rng.standard_normal(100), rng.standard_normal(100)
    idx = stats.bootstrap_indices(100, 20, 0, "t")
    for name, fn in scores.SCORES.items():
        a, b = (ys, ps) if name in ("pearson", "spearman") else (y, p)
        assert fn(a[idx], b[idx]) == pytest.approx([fn(a[i], b[i]) for i in idx]), name


def test_bootstrap_indices_are_seeded_and_keyed():
    a = stats.bootstrap_indices(50, 10, 0, "sst2", "probe")
    assert np.array_equal(a, stats.bootstrap_indices(50, 10, 0, "sst2", "probe"))
    assert not np.array_equal(a, stats.bootstrap_indices(50, 10, 1, "sst2", "probe"))
    assert not np.array_equal(a, stats.bootstrap_indices(50, 10, 0, "stsb", "probe"))
    assert stats.counts(a, 50).sum(1).tolist() == [50] * 10


def test_percentile_ci_covers_a_known_mean():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(2000) + 3.0
    reps = x[stats.bootstrap_indices(2000, 500, 0, "m")].mean(1)
    low, high = stats.percentile_ci(reps, x.mean())
    se = x.std() / np.sqrt(2000)
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_holm_matches_the_step_down_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])


def test_paired_difference_detects_a_shift_and_not_a_copy():
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 500)
    good = np.where(rng.random(500) < 0.9, y, 1 - y)
    bad = np.where(rng.random(500) < 0.6, y, 1 - y)
    idx = stats.bootstrap_indices(500, 300, 0, "t")
    rg, rb = scores.accuracy(y[idx], good[idx]), scores.accuracy(y[idx], bad[idx])
    test = stats.paired_difference(scores.accuracy(y, good), scores.accuracy(y, bad), rg, rb)
    assert test["diff"] > 0.2 and test["p_value"] < 1e-6 and test["ci_low"] > 0
    same = stats.paired_difference(0.8, 0.8, rg, rg)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def _table(encoder: str, group: str, values: dict[str, float], reps: dict[str, np.ndarray]):
    rows = [dict(encoder=encoder, group=group, task="sst2", pooling="mean", family="probe", metric=m,
                 value=v, ci_low=0.0, ci_high=1.0, n=100, note="") for m, v in values.items()]
    rep = [dict(encoder=encoder, task="sst2", pooling="mean", family="probe", metric=m, sample_key="k",
                replicates=list(r)) for m, r in reps.items()]
    return pd.DataFrame(rows), pd.DataFrame(rep)


def test_compare_holm_and_seed_groups():
    rng = np.random.default_rng(11)
    base = rng.normal(0, 0.01, 200)
    tables = [
        _table("jepa-s0", "jepa", {"acc": 0.80}, {"acc": 0.80 + base}),
        _table("jepa-s1", "jepa", {"acc": 0.82}, {"acc": 0.82 + base + rng.normal(0, 0.002, 200)}),
        _table("mlm-s0", "mlm", {"acc": 0.60}, {"acc": 0.60 + base + rng.normal(0, 0.002, 200)}),
    ]
    results = pd.concat([t[0] for t in tables], ignore_index=True)
    replicates = pd.concat([t[1] for t in tables], ignore_index=True)
    out = stats.compare(results, replicates)
    # Seeds of one group are not tested against each other; each jepa seed is tested against mlm.
    assert sorted(zip(out.encoder_a, out.encoder_b, strict=True)) == [("jepa-s0", "mlm-s0"), ("jepa-s1", "mlm-s0")]
    assert out["significant"].all()
    assert (out["p_holm"] >= out["p_value"]).all()
    agg = stats.aggregate_seeds(results).set_index("group")
    assert agg.loc["jepa", "mean"] == pytest.approx(0.81)
    assert agg.loc["jepa", "std"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert agg.loc["jepa", "n_encoders"] == 2 and agg.loc["mlm", "n_encoders"] == 1


def _seed_table(values: dict[str, list[float]], metric: str = "uniformity", task: str = "sst2") -> pd.DataFrame:
    return pd.DataFrame([dict(arm=arm, seed=i, task=task, pooling="mean", metric=metric, protocol="harness", value=v)
                         for arm, vs in values.items() for i, v in enumerate(vs)])


def test_seed_tests_match_scipy_and_the_exact_permutation_count():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.5]
    out = stats.seed_tests(_seed_table({"hybrid": a, "mlm": b}), "hybrid", "mlm")
    row = out.iloc[0]
    assert (row.n_a, row.n_b) == (3, 3) and row["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert row.std_a == pytest.approx(np.std(a, ddof=1)) and row.std_b == pytest.approx(np.std(b, ddof=1))
    assert row.p_welch == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    # all 20 relabelings of 6 values into 3 + 3: only the observed split and its mirror are as extreme -> 2/20
    assert row.permutation_exact and row.p_permutation == pytest.approx(0.1)
    expected = permutation_test((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                permutation_type="independent", vectorized=True, n_resamples=np.inf).pvalue
    assert row.p_permutation == pytest.approx(expected)
    assert "Welch" in row.test and "permutation" in row.test and row.holm_on == "p_welch"
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx((ci.low, ci.high))


def test_seed_tests_holm_over_the_family_on_the_named_p_value():
    base = [0.1, -0.1, 0.05, -0.05, 0.0]
    frames = [_seed_table({"hybrid": [shift + v for v in base], "mlm": [-v for v in base[::-1]]}, task=task)
              for task, shift in (("sst2", 1.0), ("stsb", 0.0), ("cola", 0.5))]
    table = pd.concat(frames, ignore_index=True)
    for holm_on, column in (("permutation", "p_permutation"), ("welch", "p_welch")):
        out = stats.seed_tests(table, "hybrid", "mlm", holm_on=holm_on)
        assert out.p_holm.to_numpy() == pytest.approx(stats.holm(out[column].to_numpy()))
        assert out[f"{column}_holm"].to_numpy() == pytest.approx(out.p_holm.to_numpy())
        assert (out.holm_on == column).all()
    three = table[table.seed < 3]  # 3 seeds per arm: the exact permutation p is never below 2 / C(6, 3) = 0.1
    assert not stats.seed_tests(three, "hybrid", "mlm", holm_on="permutation").significant.any()
    assert stats.seed_tests(three, "hybrid", "mlm").significant.any()
    out = stats.seed_tests(table, "hybrid", "mlm", holm_on="welch")
    assert out.set_index("task").significant.to_dict() == {"sst2": True, "stsb": False, "cola": True}
    single = stats.seed_tests(_seed_table({"hybrid": [0.3], "mlm": [0.1, 0.2]}), "hybrid", "mlm")
    assert np.isnan(single.p_welch.iloc[0]) and np.isnan(single.std_a.iloc[0])  # one seed: no test
    assert np.isnan(single.p_permutation.iloc[0]) and np.isnan(single.p_holm.iloc[0])
    large = stats.seed_tests(_seed_table({"hybrid": list(range(12)), "mlm": list(range(3, 15))}), "hybrid", "mlm",
                             max_exact=1000)
    assert not large.permutation_exact.iloc[0]  # C(24, 12) > 1000: Monte Carlo, seeded


def test_paired_example_tests_are_labelled_as_such():
    results, replicates = _table("a", "a", {"acc": 0.8}, {"acc": 0.8 + np.zeros(10)})
    other = _table("b", "b", {"acc": 0.7}, {"acc": 0.7 + np.zeros(10)})
    out = stats.paired_example_tests(pd.concat([results, other[0]]), pd.concat([replicates, other[1]]))
    assert out.test.iloc[0] == stats.PAIRED_EXAMPLE_TEST and "not a test between objectives" in out.test.iloc[0]
    assert stats.compare is stats.paired_example_tests  # the former name
    assert (out.protocol == "harness").all()  # tables without a protocol column hold harness rows


def test_draws_average_resample_by_resample_and_keep_their_spread():
    draws = [{"uniformity": stats.Measure(v, np.array([v, v + 1.0]), 100, "n")} for v in (-1.0, -2.0, -4.0)]
    out = stats.average_draws(draws, "random draws")
    assert out["uniformity"].value == pytest.approx(-7 / 3)
    assert out["uniformity"].replicates == pytest.approx([-7 / 3, -4 / 3])
    assert out["uniformity_draw_std"].value == pytest.approx(np.std([-1, -2, -4], ddof=1))
    assert len(out["uniformity_draw_std"].replicates) == 0  # a spread, shown without an interval
    assert "uniformity_draw_std" in out["uniformity"].note
    assert stats.average_draws(draws[:1], "x") is draws[0]
    assert stats.percentile_ci(np.array([]), 1.0) != stats.percentile_ci(np.array([]), 1.0)  # (nan, nan)

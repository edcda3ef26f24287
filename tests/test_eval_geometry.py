"""Geometry metrics against their formulas on constructed point clouds, and IsoScore against its package."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from IsoScore import IsoScore as isoscore_package

from eval import geometry as geo


def _cloud_with_spectrum(eigs: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n points whose sample covariance has exactly the eigenvalues eigs (in random orthogonal axes)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(eigs)))
    q, _ = np.linalg.qr(z - z.mean(0))  # orthonormal, centred columns
    rot, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return (np.sqrt(n - 1) * q * np.sqrt(eigs)) @ rot.T + 5.0  # the offset must not matter


def test_uniformity_of_antipodal_points_is_minus_8():
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert geo.uniformity(x) == pytest.approx(-8.0)  # ||x - y||^2 = 4, t = 2 -> log exp(-8)


def test_uniformity_matches_the_pairwise_formula():
    # Antipodal pairs on 3 orthogonal axes: 6 unit vectors, distances^2 are 4 (antipodal) or 2.
    x = np.concatenate([np.eye(3), -np.eye(3)]) * 3.0  # scale must not matter (L2-normalised)
    pairs = [(i, j) for i, j in itertools.permutations(range(6), 2)]
    expected = np.log(np.mean([np.exp(-2 * np.sum((x[i] / 3 - x[j] / 3) ** 2)) for i, j in pairs]))
    assert geo.uniformity(x) == pytest.approx(expected)
    assert expected == pytest.approx(np.log((4 * np.exp(-4) + np.exp(-8)) / 5))


def test_centred_uniformity_removes_a_common_offset():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8))
    shifted = x + 50.0  # all vectors nearly parallel: uncentred uniformity collapses towards 0
    assert geo.uniformity(shifted) > -0.01
    assert geo.uniformity(shifted, centered=True) == pytest.approx(geo.uniformity(x, centered=True))


def test_alignment_is_mean_squared_distance_not_fourth_power():
    u = np.array([[1.0, 0.0], [0.0, 2.0]])
    theta = np.array([np.pi / 3, np.pi / 2])
    v = np.stack([np.cos(theta), np.sin(theta)], 1)  # angles pi/3 to e1 and 0 to e2
    # ||u_hat - v_hat||^2 = 2 - 2 cos(angle): 1 and 0 -> mean 0.5 (the 4th power would also give 0.5,
    # so add a pair at angle pi/2: distance^2 2, 4th power 4)
    u, v = np.vstack([u, [[1.0, 0.0]]]), np.vstack([v, [[0.0, 3.0]]])
    assert geo.alignment(u, v) == pytest.approx((1 + 0 + 2) / 3)


def test_alignment_same_label_averages_same_label_pairs():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.mean([np.sum((x_hat[0] - x_hat[1]) ** 2), np.sum((x_hat[2] - x_hat[3]) ** 2)])
    assert geo.alignment_same_label(x, labels) == pytest.approx(expected)


def test_mean_cosine_and_class_distance_ratio():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5))
    labels = rng.integers(0, 3, 40)
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = x_hat @ x_hat.T
    off = ~np.eye(40, dtype=bool)
    assert geo.mean_cosine(x) == pytest.approx(cos[off].mean())
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    same = labels[:, None] == labels[None]
    assert geo.class_distance_ratio(x, labels) == pytest.approx(dist[same & off].mean() / dist[~same].mean())
    tight = np.repeat(np.eye(3) * 10, 10, axis=0) + 0.01 * rng.standard_normal((30, 3))
    assert geo.class_distance_ratio(tight, np.repeat(np.arange(3), 10)) < 0.01


def test_spectrum_metrics_on_a_known_power_law_spectrum():
    eigs = np.arange(1, 33, dtype=float) ** -1.5
    x = _cloud_with_spectrum(eigs, n=500)
    m = geo.spectral_metrics(x)
    assert geo.spectrum(x) == pytest.approx(eigs, rel=1e-8)
    assert m["alpha_req"] == pytest.approx(1.5)
    assert m["alpha_req_r2"] == pytest.approx(1.0)
    assert m["stable_rank"] == pytest.approx(eigs.sum() / eigs.max())
    p = eigs / eigs.sum()
    assert m["spectral_entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(32))
    sv = np.linalg.svd(x, compute_uv=False)  # RankMe: singular values of the raw (uncentred) matrix
    q = sv / sv.sum()
    assert m["effective_rank"] == pytest.approx(np.exp(-(q * np.log(q)).sum()))


def test_rank_one_data_has_effective_rank_one():
    rng = np.random.default_rng(3)
    x = np.outer(rng.standard_normal(200), rng.standard_normal(16))
    m = geo.spectral_metrics(x)
    assert m["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert m["stable_rank"] == pytest.approx(1.0, abs=1e-6)
    assert m["spectral_entropy"] == pytest.approx(0.0, abs=1e-3)
    assert m["isoscore"] == pytest.approx(0.0, abs=1e-3)
    assert np.isnan(m["alpha_req"])  # a power law needs more than one direction


def test_isotropic_gaussian_is_isotropic():
    x = np.random.default_rng(4).standard_normal((20000, 10))
    m = geo.spectral_metrics(x)
    assert m["isoscore"] > 0.99
    assert m["spectral_entropy"] > 0.99
    assert m["effective_rank"] > 9.9
    assert abs(m["alpha_req"]) < 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isoscore_matches_the_isoscore_package(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((400, 24)) @ rng.standard_normal((24, 24)) * rng.uniform(0.1, 3, 24)
    expected = float(isoscore_package.IsoScore(x))
    assert geo.spectral_metrics(x)["isoscore"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_bootstrap_weights_select_points_and_batch():
    """0/1 weights equal the metric on the selected subset; a (B, N) batch equals B single calls."""
    rng = np.random.default_rng(5)
    x, labels = rng.standard_normal((60, 6)), rng.integers(0, 2, 60)
    keep = rng.random(60) < 0.6
    w = keep.astype(float)
    assert geo.uniformity(x, w=w) == pytest.approx(geo.uniformity(x[keep]))
    assert geo.mean_cosine(x, w=w) == pytest.approx(geo.mean_cosine(x[keep]))
    assert geo.class_distance_ratio(x, labels, w) == pytest.approx(geo.class_distance_ratio(x[keep], labels[keep]))
    spec_w, spec_sub = geo.spectral_metrics(x, w), geo.spectral_metrics(x[keep])
    for name in spec_sub:
        assert spec_w[name] == pytest.approx(spec_sub[name], rel=1e-6), name
    batch = np.stack([w, np.ones(60), rng.integers(0, 3, 60).astype(float)])
    assert geo.uniformity(x, w=batch) == pytest.approx([geo.uniformity(x, w=b) for b in batch])
    batched = geo.spectral_metrics(x, batch)
    assert batched["isoscore"] == pytest.approx([geo.spectral_metrics(x, b)["isoscore"] for b in batch])


def test_lexical_targets_skip_special_tokens_and_break_ties_by_first_occurrence():
    special = {0, 101, 102}
    ids = [np.array([101, 7, 9, 9, 7, 5, 102]), np.array([101, 4, 3, 102, 0]), np.array([101, 102])]
    assert geo.lexical_targets(ids, special).tolist() == [7, 4, -1]


def test_lexical_probe_beats_majority_when_the_embedding_encodes_the_token():
    rng = np.random.default_rng(6)
    targets = rng.integers(0, 5, 400)
    x = np.eye(5)[targets] * 3 + 0.1 * rng.standard_normal((400, 5))
    probe, majority = geo.lexical_probe(x, targets, seed=0)
    assert probe.mean() > 0.95
    assert majority.mean() < 0.4

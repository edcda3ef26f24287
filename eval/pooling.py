"""Sentence poolings over padded token states `h` (batch, len, hidden) with a bool `mask` (batch, len).

All poolings read real tokens only, so padding (its length or its values) never changes a pooled
vector. "attention" is a learned single-query pooler: it has parameters, and the probe trains it
together with its linear head (see probes.py); it starts at q = 0, i.e. exactly as mean pooling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eval.embed import TokenStates

POOLINGS = ("cls", "mean", "max", "weighted", "attention")


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


class AttentionPooler(nn.Module):
    """softmax(h q / sqrt(d)) over real tokens, then the weighted sum of h."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))  # zero query = uniform weights = mean pooling

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (h @ self.query) / h.shape[-1] ** 0.5
        a = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return (h * a.unsqueeze(-1)).sum(1)


FIXED = {"cls": cls, "mean": mean, "max": max_, "weighted": weighted}


def check_poolings(names: list[str]) -> None:
    bad = [n for n in names if n not in POOLINGS]
    if bad:
        raise ValueError(f"unknown pooling {', '.join(bad)}: choose from {', '.join(POOLINGS)}")


@torch.no_grad()
def pool_texts(
    states: TokenStates, pooling: str, pooler: AttentionPooler | None = None, chunk: int = 512
) -> np.ndarray:
    """(n_texts, hidden) pooled vectors; "attention" needs its trained pooler."""
    if pooling == "attention" and pooler is None:
        raise ValueError("attention pooling needs a trained AttentionPooler (it is fitted with the probe)")
    fn = pooler if pooling == "attention" else FIXED[pooling]
    starts = range(0, len(states), chunk)
    return torch.cat([fn(*states.padded(np.arange(s, min(s + chunk, len(states))))) for s in starts]).numpy()

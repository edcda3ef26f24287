"""Dropout with a cheap mask on CPU.

torch's CPU dropout draws one Bernoulli sample per element (~13% of a small.yaml MLM step in the profile).
Here every 64-bit random word gives four 16-bit lanes, each compared against a threshold: the same inverted
dropout (zero with probability p, scale the rest by 1/(1-p)) with p rounded to a multiple of 1/65536, seeded
by torch's generator like any other op. On GPU it is torch's own fused dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lane_dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout of `x` (training mode); see the module docstring."""
    if p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    if p >= 1:
        return x * 0.0
    threshold = -(2**15) + round(p * 2**16)  # int16 lanes below it are dropped
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= threshold
    return x * torch.where(keep, 1.0 / (1.0 - p), 0.0).to(x.dtype)  # the scaled mask in one pass


class LaneDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return lane_dropout(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_lane_dropout(model: nn.Module) -> nn.Module:
    """Replace every nn.Dropout of `model` (e.g. a Hugging Face encoder's) by LaneDropout; no weights change."""
    for name, child in model.named_children():
        if isinstance(child, nn.Dropout):
            setattr(model, name, LaneDropout(child.p))
        else:
            use_lane_dropout(child)
    return model

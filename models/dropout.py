"""Dropout with a cheap mask on CPU.

torch's CPU dropout draws one Bernoulli sample per element (~13% of a small.yaml MLM step in the profile).
Here every 64-bit random word (63 uniform bits from `random_()`) gives four 15-bit lanes, each compared against a
threshold: the same inverted dropout (zero with probability p, scale the rest by 1/(1-p)) with p rounded to a
multiple of 2**-15, seeded by torch's generator like any other op. The scaled mask is built with float ops only
(torch's bool -> float casts and `where` are several times slower than a float pass here). On GPU it is torch's
own fused dropout.
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
    dropped = round(p * 2**15)  # in units of 2**-15
    if dropped == 0:
        return x
    if dropped >= 2**15:
        return x * 0.0
    return x * scaled_mask(x.shape, p, x.dtype)


def scaled_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """0 with probability round(p * 2**15) / 2**15, else 1 / (1 - p), for 0 < round(p * 2**15) < 2**15."""
    numel = shape.numel()
    threshold = round(p * 2**15)  # lanes below it are dropped
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_()  # uniform on [0, 2**63)
    words.bitwise_and_(0x7FFF_7FFF_7FFF_7FFF)  # four 15-bit lanes (the spare bits 15, 31, 47 cleared)
    lanes = words.view(torch.int16)[:numel].sub_(threshold - 1)  # kept: >= 1, dropped: <= 0
    return lanes.to(dtype).clamp_(0, 1).mul_(1.0 / (1.0 - p)).view(shape)


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

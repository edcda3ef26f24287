"""RankMe (Garrido et al. 2023): the effective rank of an embedding matrix from its singular values.

One formula for the training loop's collapse check (objectives.jepa) and the evaluation's geometry (eval.geometry).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rankme(singular_values: Tensor) -> Tensor:
    """exp of the entropy of the singular values normalised to sum 1, over the last dimension (batched)."""
    s = singular_values.to(torch.promote_types(singular_values.dtype, torch.float32))  # float64 stays float64
    p = s / s.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1))

"""How the hybrid mixes its two losses: L = λ·L_JEPA + (1−λ)·L_MLM, or Kendall et al.'s uncertainty weights.

`learned` is the paper's rule: λ = sigmoid(w) with w trained by the same optimiser. Since
dL/dw = λ(1−λ)(L_JEPA − L_MLM), λ drifts toward whichever loss is smaller; that is why λ is reported
at every log step, never silently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LossWeighting(nn.Module):
    def __init__(self, mode: str, lambda_init: float):
        super().__init__()
        self.mode = mode
        if mode == "learned":
            self.w = nn.Parameter(torch.tensor(math.log(lambda_init / (1 - lambda_init))))
        elif mode == "fixed":
            self.register_buffer("lam", torch.tensor(lambda_init))
        elif mode == "uncertainty":
            # s_i = log σ_i²; loss = Σ ½·exp(−s_i)·L_i + ½·s_i. Initialised so the weights start at λ, 1−λ.
            self.log_var = nn.Parameter(torch.tensor([-math.log(2 * lambda_init), -math.log(2 * (1 - lambda_init))]))
        else:
            raise ValueError(f"objective.weighting={mode!r}: must be one of learned, fixed, uncertainty")

    def forward(self, loss_jepa: Tensor, loss_mlm: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (total loss, λ): for `uncertainty`, λ is JEPA's share of the two weights."""
        if self.mode == "uncertainty":
            weights = 0.5 * torch.exp(-self.log_var)
            total = weights[0] * loss_jepa + weights[1] * loss_mlm + 0.5 * self.log_var.sum()
            return total, (weights[0] / weights.sum()).detach()
        lam = torch.sigmoid(self.w) if self.mode == "learned" else self.lam
        return lam * loss_jepa + (1 - lam) * loss_mlm, lam.detach()

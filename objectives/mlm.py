"""BERT masked-language modelling: cross-entropy over the masked positions only.

The vocabulary head runs on the masked tokens alone (~15% of them): at d=256 the 30,522-way decoder over
every position would be most of a step's FLOPs. The loss is torch's `F.cross_entropy` in fp32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from models import encode
from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from objectives.spec import ObjectiveModule


def mlm_term(module: ObjectiveModule, hidden: Tensor, batch: MaskedBatch, diagnostics: bool
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """hidden (B, L, D) from the student's pass over `batch.mlm_input_ids`."""
    masked = hidden.flatten(0, 1).index_select(0, batch.mlm_positions)
    logits = module.nets.mlm_head(masked).float()
    loss = F.cross_entropy(logits, batch.mlm_labels)
    metrics = {"loss_mlm": loss.detach()}
    if diagnostics:
        metrics["mlm_acc"] = (logits.detach().argmax(-1) == batch.mlm_labels).float().mean()
    return loss, metrics


def mlm_objective(module: ObjectiveModule, batch: MaskedBatch, diagnostics: bool
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    hidden = encode(module.nets.encoder, batch.mlm_input_ids, batch.attention_mask)
    loss, metrics = mlm_term(module, hidden, batch, diagnostics)
    return loss, {"loss": loss.detach(), **metrics, "lambda": loss.new_zeros(())}

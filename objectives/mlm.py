"""BERT masked-language modelling: cross-entropy over the masked positions only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from models import encode
from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from objectives import PretrainModule


def mlm_term(module: PretrainModule, hidden: Tensor, batch: MaskedBatch, diagnostics: bool
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """hidden (B, L, D) from the student's pass over `batch.mlm_input_ids`."""
    masked = hidden.flatten(0, 1).index_select(0, batch.mlm_positions)
    logits = module.nets.mlm_head(masked).float()
    loss = F.cross_entropy(logits, batch.mlm_labels)
    metrics = {"loss_mlm": loss.detach()}
    if diagnostics:
        metrics["mlm_acc"] = (logits.argmax(-1) == batch.mlm_labels).float().mean()
    return loss, metrics


def mlm_objective(module: PretrainModule, batch: MaskedBatch, diagnostics: bool
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    hidden = encode(module.nets.encoder, batch.mlm_input_ids, batch.attention_mask)
    loss, metrics = mlm_term(module, hidden, batch, diagnostics)
    return loss, {"loss": loss.detach(), **metrics, "lambda": loss.new_zeros(())}

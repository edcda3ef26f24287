"""Predict and Reconstruct: L = λ·L_JEPA + (1−λ)·L_MLM on one shared encoder.

passes: 2 (the paper) - a context pass over the clean context tokens feeds the predictor, and a
          full pass over the BERT-corrupted sequence feeds the MLM head.
passes: 1             - one student pass over a sequence whose JEPA target blocks are [MASK]ed (their
          tokens are never visible) and which is BERT-corrupted elsewhere; its states feed both the
          MLM head (at the BERT positions) and the predictor (at the context positions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from models import encode
from objectives.jepa import forward_context, gather_positions, jepa_term
from objectives.masking import MaskedBatch
from objectives.mlm import mlm_term

if TYPE_CHECKING:
    from objectives.spec import ObjectiveModule


def hybrid_objective(module: ObjectiveModule, batch: MaskedBatch, diagnostics: bool
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    hidden = encode(module.nets.encoder, batch.mlm_input_ids, batch.attention_mask)
    loss_mlm, mlm_metrics = mlm_term(module, hidden, batch, diagnostics)
    if module.cfg.passes == 2:
        context = forward_context(module, batch)
    else:
        context = gather_positions(hidden, batch.ctx_idx)
    loss_jepa, jepa_metrics = jepa_term(module, context, batch, diagnostics)
    loss, lam = module.weighting(loss_jepa, loss_mlm)
    return loss, {"loss": loss.detach(), **mlm_metrics, **jepa_metrics, "lambda": lam}

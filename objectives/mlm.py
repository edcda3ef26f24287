"""BERT masked-language modelling: cross-entropy over the masked positions only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models import encode
from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from objectives import PretrainModule


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (N, V) logits with a hand-written backward: softmax - one_hot, in place.

    Same value and gradient as F.cross_entropy; on CPU torch's version makes ~6 passes over the (N, V)
    logits (log_softmax out, zeros for nll's gradient, its backward, a copy), this makes ~3 (logsumexp
    forward; exp, the label subtraction and the scale backward): ~10% of a small.yaml MLM step."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, labels, lse)
        return (lse - logits.gather(1, labels[:, None]).squeeze(1)).mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, labels, lse = ctx.saved_tensors
        probs = torch.sub(logits, lse[:, None]).exp_()
        probs.scatter_add_(1, labels[:, None], probs.new_full((len(labels), 1), -1.0))
        return probs.mul_(grad / len(labels)), None


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over rows of fp32 logits (see _CrossEntropy)."""
    return _CrossEntropy.apply(logits, labels)


def mlm_term(module: PretrainModule, hidden: Tensor, batch: MaskedBatch, diagnostics: bool
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """hidden (B, L, D) from the student's pass over `batch.mlm_input_ids`."""
    masked = hidden.flatten(0, 1).index_select(0, batch.mlm_positions)
    logits = module.nets.mlm_head(masked).float()
    loss = cross_entropy(logits, batch.mlm_labels)
    metrics = {"loss_mlm": loss.detach()}
    if diagnostics:
        metrics["mlm_acc"] = (logits.argmax(-1) == batch.mlm_labels).float().mean()
    return loss, metrics


def mlm_objective(module: PretrainModule, batch: MaskedBatch, diagnostics: bool
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    hidden = encode(module.nets.encoder, batch.mlm_input_ids, batch.attention_mask)
    loss, metrics = mlm_term(module, hidden, batch, diagnostics)
    return loss, {"loss": loss.detach(), **metrics, "lambda": loss.new_zeros(())}

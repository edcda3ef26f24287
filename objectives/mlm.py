"""BERT masked-language modelling: cross-entropy over the masked positions only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

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


class _DecoderCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the vocabulary decoder's logits x @ W^T + b, and the count of rows whose argmax is
    the label, with the decoder fused in: for fp32 on CPU.

    One (N, V) buffer holds the logits, then exp(logit - row max), then the gradient, always in place: 5 passes
    over it and no other (N, V) tensor. nn.Linear + _CrossEntropy make 8 passes and 2 more (N, V) tensors
    (74 MB each at 608 masked tokens). The backward consumes the buffer: it runs once (no retain_graph)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, count_hits: bool
                ) -> tuple[Tensor, Tensor]:
        logits = torch.addmm(bias, x, weight.t())
        hits = (logits.argmax(1) == labels).sum() if count_hits else logits.new_zeros((), dtype=torch.long)
        label_logits = logits.gather(1, labels[:, None]).squeeze(1)
        row_max = logits.amax(dim=1, keepdim=True)
        sums = logits.sub_(row_max).exp_().sum(dim=1)  # the buffer now holds exp(logit - row max)
        loss = (sums.log() + row_max.squeeze(1) - label_logits).mean()
        ctx.save_for_backward(x, weight, logits, labels, sums)
        ctx.mark_non_differentiable(hits)
        ctx.consumed = False
        return loss, hits

    @staticmethod
    def backward(ctx, grad: Tensor, _hits_grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.consumed:
            raise RuntimeError("the fused MLM cross-entropy's backward ran twice (retain_graph is not supported)")
        ctx.consumed = True
        x, weight, exps, labels, sums = ctx.saved_tensors
        scale = grad / len(labels)
        grads = exps.mul_(scale / sums[:, None])  # softmax * grad / N
        grads.scatter_add_(1, labels[:, None], (-scale).expand(len(labels), 1))  # - one_hot * grad / N
        grad_x = grads @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grads.t() @ x if ctx.needs_input_grad[1] else None
        grad_bias = grads.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None


def decoder_cross_entropy(x: Tensor, decoder: nn.Linear, labels: Tensor, count_hits: bool = False
                          ) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy of decoder(x) against labels, rows whose argmax is the label). Fused on CPU in fp32
    (_DecoderCrossEntropy); elsewhere (GPU, bf16 autocast) the decoder then the fp32 cross_entropy."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return _DecoderCrossEntropy.apply(x, decoder.weight, decoder.bias, labels, count_hits)
    logits = decoder(x).float()
    hits = (logits.argmax(-1) == labels).sum() if count_hits else logits.new_zeros((), dtype=torch.long)
    return cross_entropy(logits, labels), hits


def mlm_term(module: PretrainModule, hidden: Tensor, batch: MaskedBatch, diagnostics: bool
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """hidden (B, L, D) from the student's pass over `batch.mlm_input_ids`."""
    masked = hidden.flatten(0, 1).index_select(0, batch.mlm_positions)
    head = module.nets.mlm_head
    loss, hits = decoder_cross_entropy(head.transform(masked), head.decoder, batch.mlm_labels, diagnostics)
    metrics = {"loss_mlm": loss.detach()}
    if diagnostics:
        metrics["mlm_acc"] = hits.float() / len(batch.mlm_labels)
    return loss, metrics


def mlm_objective(module: PretrainModule, batch: MaskedBatch, diagnostics: bool
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    hidden = encode(module.nets.encoder, batch.mlm_input_ids, batch.attention_mask)
    loss, metrics = mlm_term(module, hidden, batch, diagnostics)
    return loss, {"loss": loss.detach(), **metrics, "lambda": loss.new_zeros(())}

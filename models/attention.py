"""The encoder's attention function: Hugging Face's SDPA, except when training on CPU with attention dropout.

torch's CPU flash kernel has no dropout: with dropout_p > 0, SDPA takes its math path and draws one Bernoulli
sample per attention probability (~9% of a small.yaml MLM step in the profile). There this function runs the
same math (scores, padding mask, softmax, dropout, values) with `lane_dropout`'s cheap mask. Evaluation, the
EMA target, attention_dropout=0 and GPUs get SDPA unchanged (flash kernels, fused dropout on GPU).

Registered with transformers under LANE_SDPA, for attention and for its masks (SDPA's boolean masks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from models.dropout import lane_dropout

LANE_SDPA = "lane_sdpa"


def lane_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                        dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """query/key/value (B, H, L, Dh), attention_mask boolean (B, 1, Lq, Lk) or None -> ((B, Lq, H, Dh), None)."""
    plain = dropout == 0 or query.device.type != "cpu" or query.shape[1] != key.shape[1]
    if plain or kwargs.get("is_causal") or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        # A large negative number, not -inf: a row with no visible key gets a finite (uniform) softmax.
        scores = scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
    probs = lane_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2), None


AttentionInterface.register(LANE_SDPA, lane_sdpa_attention)
AttentionMaskInterface.register(LANE_SDPA, sdpa_mask)

"""Analytic model FLOPs of one training step, per objective and config (for MFU and compute matching).

Counts matmul FLOPs only (2 per multiply-add), as torch.utils.flop_counter does: linear layers,
attention scores and values, the MLM head on masked positions only. A trained part costs 3x its
forward (forward + backward for inputs and weights); the EMA target runs forward only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from harness.config import Config, ModelConfig


@dataclass(frozen=True)
class StepShape:
    """The sizes one step's FLOPs depend on (per worker)."""

    batch: int
    seq_len: int
    mlm_positions: float = 0.0  # total masked tokens in the batch
    ctx_len: float = 0.0  # context tokens per row
    tgt_len: float = 0.0  # tokens per target block


def expected_shape(cfg: Config) -> StepShape:
    """Mean mask sizes for full-length packed rows ([CLS] ... [SEP]), from the masking config."""
    m, batch, content = cfg.masking, cfg.optim.batch_size, cfg.data.seq_len - 2
    enc = sum(m.enc_mask_scale) / 2
    pred = sum(m.pred_mask_scale) / 2
    hidden = 1 - (1 - pred) ** m.num_pred_masks  # expected share of a row under some target block
    mlm_eligible = content * (1 - hidden) if cfg.objective.name == "hybrid" and cfg.objective.passes == 1 else content
    return StepShape(batch=batch, seq_len=cfg.data.seq_len, mlm_positions=m.mlm_probability * mlm_eligible * batch,
                     ctx_len=enc * content * (1 - hidden), tgt_len=pred * content)


def shape_of(batch: MaskedBatch) -> StepShape:
    """The exact sizes of one masked batch."""
    b, length = batch.input_ids.shape
    return StepShape(
        batch=b, seq_len=length,
        mlm_positions=0 if batch.mlm_positions is None else batch.mlm_positions.numel(),
        ctx_len=0 if batch.ctx_idx is None else batch.ctx_idx.shape[1],
        tgt_len=0 if batch.tgt_idx is None else batch.tgt_idx.shape[2],
    )


def transformer_forward_flops(rows: float, seq: float, width: int, ffn: int, layers: int) -> float:
    """Forward matmul FLOPs of `layers` transformer layers over `rows` sequences of `seq` tokens."""
    linear = 2 * rows * seq * (4 * width * width + 2 * width * ffn)  # qkv + out proj + 2 FFN matmuls
    attention = 4 * rows * seq * seq * width  # scores (QK^T) and weighted values (PV)
    return layers * (linear + attention)


def train_flops_per_step(cfg: Config, shape: StepShape | None = None) -> float:
    """Model FLOPs of one training step on one worker (forward + backward, EMA target forward)."""
    s = shape or expected_shape(cfg)
    m: ModelConfig = cfg.model
    name, d = cfg.objective.name, m.hidden_size

    def encoder(seq: float) -> float:
        return transformer_forward_flops(s.batch, seq, d, m.intermediate_size, m.num_layers)

    trained = 0.0  # forward FLOPs of the parts that get gradients
    frozen = 0.0  # forward-only FLOPs (EMA target)
    if name in ("mlm", "hybrid"):
        trained += encoder(s.seq_len) + 2 * s.mlm_positions * (d * d + d * m.vocab_size)
    if name in ("jepa", "hybrid"):
        if name == "jepa" or cfg.objective.passes == 2:
            trained += encoder(s.ctx_len)
        w, blocks = m.predictor_width, cfg.masking.num_pred_masks
        trained += 2 * s.batch * s.ctx_len * d * w  # context latents -> predictor width
        trained += transformer_forward_flops(blocks * s.batch, s.ctx_len + s.tgt_len, w, 4 * w, m.predictor_depth)
        trained += 2 * blocks * s.batch * s.tgt_len * w * d  # predictions -> encoder width
        frozen += encoder(s.seq_len)
    return 3 * trained + frozen


# FlopCounterMode has no formula for the CPU flash-attention kernels SDPA dispatches to here;
# register torch's own SDPA formulas for them so CPU measurements count attention.
_aten = torch.ops.aten
_CPU_SDPA = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_SDPA is not None:
    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def measured_flops(step: Callable[[], None]) -> int:
    """FLOPs torch counts while running `step` (e.g. a forward + backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()

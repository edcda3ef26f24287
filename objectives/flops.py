"""Analytic model FLOPs of the parts of a training step (for MFU and compute matching).

Counts matmul FLOPs only (2 per multiply-add), as torch.utils.flop_counter does: linear layers,
attention scores and values, the MLM head on masked positions only. A trained part costs 3x its
forward (forward + backward for inputs and weights); the EMA target runs forward only. Each objective's spec
in the registry (objectives.OBJECTIVES) sums the parts it runs; the same GEMM list gives the shapes at which
benchmarks measure the matmul rate MFU is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from objectives.config import RunConfig

Matmuls = tuple[list["Gemm"], float]  # (GEMMs, FLOPs of the attention matmuls)


@dataclass(frozen=True)
class StepShape:
    """The sizes one step's FLOPs depend on (per worker)."""

    batch: int
    seq_len: int
    mlm_positions: float = 0.0  # total masked tokens in the batch
    ctx_len: float = 0.0  # context tokens per row
    tgt_len: float = 0.0  # tokens per target block


def expected_shape(cfg: RunConfig, hide_targets: bool = False) -> StepShape:
    """Mean mask sizes for full-length packed rows ([CLS] ... [SEP]), from the masking config. `hide_targets`:
    BERT masking skips the JEPA target blocks (the one-pass hybrid)."""
    m, batch, content = cfg.masking, cfg.optim.batch_size, cfg.data.seq_len - 2
    enc = sum(m.enc_mask_scale) / 2
    pred = sum(m.pred_mask_scale) / 2
    hidden = 1 - (1 - pred) ** m.num_pred_masks  # expected share of a row under some target block
    mlm_eligible = content * (1 - hidden) if hide_targets else content
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


@dataclass(frozen=True)
class Gemm:
    """One matmul shape of a step, (m x k) @ (k x n), run `count` times. A trained layer runs 3 matmuls of
    its forward's FLOPs (forward, input gradient, weight gradient); a forward-only one (the EMA target) 1."""

    m: float  # rows (tokens); an expected value for masked sizes
    k: int
    n: int
    count: int

    @property
    def flops(self) -> float:
        return 2 * self.m * self.k * self.n * self.count


def transformer_gemms(tokens: float, width: int, ffn: int, layers: int, passes: int, fused_qkv: bool = False,
                      last_layer_outputs: float | None = None) -> list[Gemm]:
    """The linear layers of `layers` transformer layers over `tokens` tokens, each run `passes` times (3 trained,
    1 forward-only). With `last_layer_outputs`, the last layer keeps only that many outputs: keys and values
    over every token, queries, output projection and FFN over the kept ones."""
    full = layers if last_layer_outputs is None else layers - 1
    qkv = Gemm(tokens, width, 3 * width, full * passes) if fused_qkv else Gemm(tokens, width, width, 3 * full * passes)
    gemms = [qkv, Gemm(tokens, width, width, full * passes), Gemm(tokens, width, ffn, full * passes),
             Gemm(tokens, ffn, width, full * passes)]
    if last_layer_outputs is not None:
        kept = last_layer_outputs
        kv = Gemm(tokens, width, 2 * width, passes) if fused_qkv else Gemm(tokens, width, width, 2 * passes)
        gemms += [kv, Gemm(kept, width, width, 2 * passes), Gemm(kept, width, ffn, passes),
                  Gemm(kept, ffn, width, passes)]
    return [g for g in gemms if g.count > 0]


def attention_flops(rows: float, seq: float, width: int, layers: int, last_layer_queries: float | None = None
                    ) -> float:
    """Forward FLOPs of attention scores (QK^T) and weighted values (PV) over `rows` sequences of `seq` tokens."""
    queries = seq * layers if last_layer_queries is None else seq * (layers - 1) + last_layer_queries
    return 4 * rows * queries * seq * width


def encoder_matmuls(cfg: RunConfig, batch: int, seq: float, passes: int) -> Matmuls:
    """The encoder over `batch` rows of `seq` tokens, run `passes` times (3: trained, 1: forward only)."""
    m = cfg.model
    gemms = transformer_gemms(batch * seq, m.hidden_size, m.intermediate_size, m.num_layers, passes)
    return gemms, passes * attention_flops(batch, seq, m.hidden_size, m.num_layers)


def mlm_matmuls(cfg: RunConfig, s: StepShape) -> Matmuls:
    """The student's pass over the corrupted rows and the MLM head on the masked tokens."""
    d = cfg.model.hidden_size
    gemms, attention = encoder_matmuls(cfg, s.batch, s.seq_len, 3)
    return gemms + [Gemm(s.mlm_positions, d, d, 3), Gemm(s.mlm_positions, d, cfg.model.vocab_size, 3)], attention


def jepa_matmuls(cfg: RunConfig, s: StepShape, context_pass: bool = True) -> Matmuls:
    """The student's pass over the context tokens (unless the context comes from another pass), the predictor
    (its last block at the target queries only) and the EMA target's forward pass over the clean rows."""
    m, d = cfg.model, cfg.model.hidden_size
    gemms, attention = encoder_matmuls(cfg, s.batch, s.ctx_len, 3) if context_pass else ([], 0.0)
    w, blocks = m.predictor_width, cfg.masking.num_pred_masks
    rows, row_len, queries = blocks * s.batch, s.ctx_len + s.tgt_len, blocks * s.batch * s.tgt_len
    gemms.append(Gemm(s.batch * s.ctx_len, d, w, 3))  # context latents -> predictor width
    gemms += transformer_gemms(rows * row_len, w, 4 * w, m.predictor_depth, 3, fused_qkv=True,
                               last_layer_outputs=queries)
    attention += 3 * attention_flops(rows, row_len, w, m.predictor_depth, last_layer_queries=s.tgt_len)
    gemms.append(Gemm(queries, w, d, 3))  # predictions -> encoder width
    target, target_attention = encoder_matmuls(cfg, s.batch, s.seq_len, 1)
    return [g for g in gemms + target if g.m > 0], attention + target_attention


def hybrid_matmuls(cfg: RunConfig, s: StepShape) -> Matmuls:
    """MLM's parts and JEPA's; with passes=1 the context latents come from the MLM pass (no context pass)."""
    mlm_gemms, mlm_attention = mlm_matmuls(cfg, s)
    jepa_gemms, jepa_attention = jepa_matmuls(cfg, s, context_pass=cfg.objective.passes == 2)
    return mlm_gemms + jepa_gemms, mlm_attention + jepa_attention


def total_flops(matmuls: Matmuls) -> float:
    gemms, attention = matmuls
    return sum(g.flops for g in gemms) + attention


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

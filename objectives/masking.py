"""Masking rules for text: BERT corruption and I-JEPA-style 1-D block masks.

Pure functions of the token ids and an explicit torch.Generator; they run on the CPU in the data
path, so the step itself never syncs on mask shapes. Invariants (tests/test_masking.py checks them
statistically over many draws):

BERT  - each eligible token (real, non-special, and in one-pass hybrid mode not a JEPA target) is
        selected with probability p; of the selected 80% become [MASK], 10% a random token, 10%
        stay; labels are -100 everywhere else.
JEPA  - `num_pred_masks` target blocks per row, each a run of round(s * n) consecutive eligible tokens
        (n = the row's real, non-special length; s drawn once per batch from pred_mask_scale; a run of
        special tokens inside the content, e.g. [UNK]s, is stepped over, so no block is ever empty); one
        context block the same way from enc_mask_scale.
      - context = context block minus every target position: no target is ever visible to the
        context encoder. Specials and padding are never targets nor context.
      - every row keeps >= min_keep context tokens (the context block is redrawn if not).
      - ragged counts are truncated to the batch minimum, keeping the leftmost positions (as
        I-JEPA does), so all rows have equal length. Nothing is ever padded with index 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from objectives.config import MaskingConfig

IGNORE_INDEX = -100
_CONTEXT_TRIES = 20


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    mask: int
    vocab_size: int
    all_special: tuple[int, ...]  # never masked, never JEPA targets

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        return cls(pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                   all_special=tuple(sorted(tokenizer.all_special_ids)))


@dataclass(frozen=True)
class MaskPlan:
    """Which masks an objective needs; see objectives.MASK_PLANS."""

    mlm: bool
    jepa: bool
    hide_targets: bool = False  # one-pass hybrid: JEPA targets become [MASK] in the MLM input


@dataclass
class MaskedBatch:
    input_ids: Tensor  # (B, L) clean tokens: the target encoder's and the context pass's input
    attention_mask: Tensor  # (B, L) 1 = real token
    mlm_input_ids: Tensor | None = None  # (B, L) the student's corrupted input for the MLM pass
    mlm_positions: Tensor | None = None  # (M,) flat indices into B*L of the tokens to reconstruct
    mlm_labels: Tensor | None = None  # (M,) their original ids
    ctx_idx: Tensor | None = None  # (B, Kc) context positions, ascending
    tgt_idx: Tensor | None = None  # (P, B, Kt) target positions of each block, ascending
    stats: dict[str, float] = field(default_factory=dict)  # mask statistics, already host floats

    def _map(self, fn: Callable[[Tensor], Tensor]) -> MaskedBatch:
        return replace(self, **{f.name: fn(getattr(self, f.name))
                                for f in fields(self) if isinstance(getattr(self, f.name), Tensor)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskedBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MaskedBatch:
        """Page-locked copies, so that .to(cuda, non_blocking=True) really overlaps with compute."""
        return self._map(Tensor.pin_memory)


def eligible_tokens(input_ids: Tensor, attention_mask: Tensor, specials: SpecialTokens) -> Tensor:
    """(B, L) bool: real tokens that are not special tokens."""
    special = torch.isin(input_ids, torch.tensor(specials.all_special, device=input_ids.device))
    return attention_mask.bool() & ~special


def bert_mask(input_ids: Tensor, eligible: Tensor, cfg: MaskingConfig, specials: SpecialTokens,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT corruption. Returns (corrupted ids, labels with -100 at unselected positions)."""
    selected = eligible & (torch.rand(input_ids.shape, generator=generator) < cfg.mlm_probability)
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < cfg.mask_token_fraction)
    to_random = selected & ~to_mask & (action < cfg.mask_token_fraction + cfg.random_token_fraction)
    random_ids = torch.randint(specials.vocab_size, input_ids.shape, generator=generator)
    corrupted = torch.where(to_mask, specials.mask, torch.where(to_random, random_ids, input_ids))
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    return corrupted, labels


def _draw_scale(scale: tuple[float, float], generator: torch.Generator) -> float:
    lo, hi = scale
    return lo + (hi - lo) * torch.rand(1, generator=generator).item()


def _blocks(eligible: Tensor, scale: float, count: int, generator: torch.Generator) -> Tensor:
    """(count, B, L) bool: `count` blocks per row, each round(scale * n) consecutive ELIGIBLE tokens (n = the row's
    eligible count). Counted over eligible tokens, a block always holds its full length: a run of ineligible
    tokens inside the content (e.g. [UNK]s) is stepped over, never drawn as an empty block. On rows whose eligible
    tokens are contiguous this is the plain contiguous block."""
    n = eligible.sum(1)
    block_len = (scale * n).round().clamp(min=1).minimum(n)
    start = (torch.rand(count, eligible.shape[0], generator=generator) * (n - block_len + 1)).long()  # a rank
    rank = eligible.long().cumsum(1) - 1  # each eligible token's rank among its row's eligible tokens
    return (rank >= start[..., None]) & (rank < (start + block_len)[..., None]) & eligible


def _leftmost(mask: Tensor, k: int) -> Tensor:
    """Ascending positions of the first k True entries of each row of `mask` (every row has >= k)."""
    return torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :k]


def jepa_masks(eligible: Tensor, cfg: MaskingConfig, generator: torch.Generator
               ) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    """Target and context positions. Returns (ctx_idx (B,Kc), tgt_idx (P,B,Kt), target union (B,L), stats)."""
    n = eligible.sum(1)
    if int(n.min()) < cfg.min_keep + 1:
        raise ValueError(f"a row has {int(n.min())} content tokens: JEPA masking needs at least "
                         f"min_keep + 1 = {cfg.min_keep + 1}; use longer sequences or lower masking.min_keep")
    targets = _blocks(eligible, _draw_scale(cfg.pred_mask_scale, generator), cfg.num_pred_masks, generator)
    hidden = targets.any(0)
    context = _blocks(eligible, _draw_scale(cfg.enc_mask_scale, generator), 1, generator)[0] & ~hidden
    for _ in range(_CONTEXT_TRIES):  # redraw the context block of rows left with too few tokens
        short = context.sum(1) < cfg.min_keep
        if not short.any():
            break
        scale = _draw_scale(cfg.enc_mask_scale, generator)
        redrawn = _blocks(eligible[short], scale, 1, generator)[0] & ~hidden[short]
        context[short] = redrawn
    else:  # targets left too little room for any block: keep every visible token of those rows
        short = context.sum(1) < cfg.min_keep
        context[short] = eligible[short] & ~hidden[short]
    if int(context.sum(1).min()) < cfg.min_keep:
        raise ValueError(f"target blocks leave fewer than masking.min_keep={cfg.min_keep} context tokens; "
                         "lower pred_mask_scale or num_pred_masks, or use longer sequences")

    ctx_len = int(context.sum(1).min())
    tgt_len = int(targets.sum(-1).min())
    ctx_idx = _leftmost(context, ctx_len)
    tgt_idx = _leftmost(targets, tgt_len)
    # Honest runtime check of the disjointness invariant, reported as a metric (always 0).
    overlap = (ctx_idx[None, :, :, None] == tgt_idx[:, :, None, :]).sum().item()
    stats = {"ctx_len": float(ctx_len), "tgt_len": float(tgt_len), "ctx_tgt_overlap": float(overlap),
             "ctx_frac": ctx_len / n.float().mean().item(), "tgt_frac": hidden.sum().item() / n.sum().item()}
    return ctx_idx, tgt_idx, hidden, stats


def mask_batch(input_ids: Tensor, attention_mask: Tensor, plan: MaskPlan, cfg: MaskingConfig,
               specials: SpecialTokens, generator: torch.Generator) -> MaskedBatch:
    """The collator: draw every mask an objective needs for one batch (on the CPU)."""
    batch = MaskedBatch(input_ids=input_ids, attention_mask=attention_mask)
    eligible = eligible_tokens(input_ids, attention_mask, specials)
    hidden = torch.zeros_like(eligible)
    if plan.jepa:
        batch.ctx_idx, batch.tgt_idx, targets, stats = jepa_masks(eligible, cfg, generator)
        batch.stats.update(stats)
        if plan.hide_targets:
            hidden = targets
    if plan.mlm:
        corrupted, labels = bert_mask(input_ids, eligible & ~hidden, cfg, specials, generator)
        batch.mlm_input_ids = torch.where(hidden, specials.mask, corrupted)
        flat = labels.flatten()
        batch.mlm_positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)
        batch.mlm_labels = flat[batch.mlm_positions]
        batch.stats["mlm_masked"] = float(batch.mlm_positions.numel())
        batch.stats["mlm_frac"] = batch.mlm_positions.numel() / max(int((eligible & ~hidden).sum()), 1)
    return batch

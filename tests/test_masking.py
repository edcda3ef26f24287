"""Statistical tests of the masking rules over many seeded draws, on real Wikipedia text."""

import pytest
import torch

from harness.config import MaskingConfig
from objectives.masking import (
    IGNORE_INDEX,
    MaskPlan,
    SpecialTokens,
    _blocks,
    bert_mask,
    eligible_tokens,
    jepa_masks,
    mask_batch,
)

DRAWS = 40


@pytest.fixture(scope="module")
def specials(tokenizer) -> SpecialTokens:
    return SpecialTokens.from_tokenizer(tokenizer)


def test_bert_masking_rates_and_labels(packed_ids, specials: SpecialTokens) -> None:
    ids = packed_ids(64, 128)
    eligible = eligible_tokens(ids, torch.ones_like(ids), specials)
    cfg = MaskingConfig()
    gen = torch.Generator().manual_seed(0)
    selected = masked = randomised = kept = 0
    for _ in range(DRAWS):
        corrupted, labels = bert_mask(ids, eligible, cfg, specials, gen)
        sel = labels != IGNORE_INDEX
        assert not (sel & ~eligible).any(), "a special token was selected"
        assert torch.equal(labels[sel], ids[sel]), "labels must be the original ids"
        assert torch.equal(corrupted[~sel], ids[~sel]), "unselected tokens must stay unchanged"
        selected += sel.sum().item()
        masked += (corrupted[sel] == specials.mask).sum().item()
        kept += (corrupted[sel] == ids[sel]).sum().item()
        randomised += ((corrupted[sel] != specials.mask) & (corrupted[sel] != ids[sel])).sum().item()
    total = eligible.sum().item() * DRAWS
    # ~300k eligible tokens: binomial std of the rate is ~0.0007; the tolerances are > 5 sigma.
    assert selected / total == pytest.approx(0.15, abs=0.004)
    assert masked / selected == pytest.approx(0.8, abs=0.01)
    assert randomised / selected == pytest.approx(0.1, abs=0.01)
    assert kept / selected == pytest.approx(0.1, abs=0.01)


def test_padding_and_specials_never_masked_or_targeted(padded_sentences, specials: SpecialTokens) -> None:
    ids, attn = padded_sentences
    assert (attn == 0).any(), "the fixture should contain padded rows"
    eligible = eligible_tokens(ids, attn, specials)
    cfg = MaskingConfig(min_keep=1, pred_mask_scale=(0.1, 0.2), enc_mask_scale=(0.6, 0.8))
    plan = MaskPlan(mlm=True, jepa=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(DRAWS):
        batch = mask_batch(ids, attn, plan, cfg, specials, gen)
        flat_eligible = eligible.flatten()
        assert flat_eligible[batch.mlm_positions].all()
        assert eligible.gather(1, batch.ctx_idx).all(), "context reached a special or padding token"
        for block in batch.tgt_idx:
            assert eligible.gather(1, block).all(), "a target landed on a special or padding token"


def test_jepa_blocks_disjoint_contiguous_and_in_range(packed_ids, specials: SpecialTokens) -> None:
    ids = packed_ids(32, 128)
    eligible = eligible_tokens(ids, torch.ones_like(ids), specials)
    n = eligible.sum(1)[0].item()  # packed rows: 126 content tokens each
    cfg = MaskingConfig(min_keep=4)
    gen = torch.Generator().manual_seed(2)
    lengths = []
    for _ in range(DRAWS):
        ctx_idx, tgt_idx, hidden, stats = jepa_masks(eligible, cfg, gen)
        assert stats["ctx_tgt_overlap"] == 0
        for p in range(cfg.num_pred_masks):
            assert not (ctx_idx[:, :, None] == tgt_idx[p][:, None, :]).any(), "context saw a target"
        assert not hidden.gather(1, ctx_idx).any(), "context saw a position of an (untruncated) target block"
        assert ctx_idx.shape[1] >= cfg.min_keep
        assert (tgt_idx.diff(dim=-1) == 1).all(), "a target block is not contiguous"
        assert (ctx_idx.diff(dim=-1) > 0).all(), "context positions must be ascending and unique"
        blocks = _blocks(eligible, 0.1 + 0.15 * torch.rand(1, generator=gen).item(), 3, gen)
        lengths.append(blocks.sum(-1).flatten())
    lengths = torch.cat(lengths).float()
    lo, hi = cfg.pred_mask_scale
    assert lengths.min() >= round(0.1 * n) and lengths.max() <= round(0.25 * n)
    assert lengths.mean().item() == pytest.approx((lo + hi) / 2 * n, rel=0.1)


def test_ragged_rows_truncate_to_batch_minimum(padded_sentences, specials: SpecialTokens) -> None:
    ids, attn = padded_sentences
    eligible = eligible_tokens(ids, attn, specials)
    cfg = MaskingConfig(min_keep=1)
    ctx_idx, tgt_idx, _, _ = jepa_masks(eligible, cfg, torch.Generator().manual_seed(3))
    # Equal lengths without padding: every index is a real content position, never index 0 ([CLS]).
    assert ctx_idx.shape[0] == ids.shape[0] and (ctx_idx > 0).all()
    assert (tgt_idx > 0).all()
    assert ctx_idx.shape[1] <= eligible.sum(1).min()


def test_one_pass_plan_hides_targets_from_the_student(packed_ids, specials: SpecialTokens) -> None:
    ids = packed_ids(16, 128)
    plan = MaskPlan(mlm=True, jepa=True, hide_targets=True)
    gen = torch.Generator().manual_seed(4)
    for _ in range(10):
        batch = mask_batch(ids, torch.ones_like(ids), plan, MaskingConfig(), specials, gen)
        for block in batch.tgt_idx:
            assert (batch.mlm_input_ids.gather(1, block) == specials.mask).all()
            flat_targets = (block + torch.arange(16)[:, None] * 128).flatten()
            assert not torch.isin(batch.mlm_positions, flat_targets).any(), "MLM asked to predict a target"


def test_masks_reproducible_from_the_seed(packed_ids, specials: SpecialTokens) -> None:
    ids = packed_ids(8, 128)
    plan = MaskPlan(mlm=True, jepa=True)

    def draw(seed: int):
        return mask_batch(ids, torch.ones_like(ids), plan, MaskingConfig(), specials,
                          torch.Generator().manual_seed(seed))

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a.mlm_input_ids, b.mlm_input_ids) and torch.equal(a.tgt_idx, b.tgt_idx)
    assert torch.equal(a.ctx_idx, b.ctx_idx)
    assert not torch.equal(a.mlm_input_ids, c.mlm_input_ids)


def test_too_short_rows_fail_clearly(padded_sentences, specials: SpecialTokens) -> None:
    ids, attn = padded_sentences
    eligible = eligible_tokens(ids, attn, specials)
    cfg = MaskingConfig(min_keep=int(eligible.sum(1).min()))
    with pytest.raises(ValueError, match="min_keep"):
        jepa_masks(eligible, cfg, torch.Generator().manual_seed(0))


def test_a_run_of_unknown_tokens_never_leaves_a_row_without_targets(packed_ids, tokenizer,
                                                                    specials: SpecialTokens) -> None:
    """A long run of [UNK] (a special token: never a target) inside a row's content, as real articles have: every
    block still holds its full count of eligible tokens, so no row ends with an empty target block."""
    ids = packed_ids(16, 64).clone()
    ids[:, 10:40] = tokenizer.unk_token_id  # 30 of 62 content tokens
    eligible = eligible_tokens(ids, torch.ones_like(ids), specials)
    n = eligible.sum(1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(DRAWS):
        scale = 0.1 + 0.15 * torch.rand(1, generator=gen).item()
        blocks = _blocks(eligible, scale, 2, gen)
        expected = (scale * n).round().clamp(min=1).minimum(n)
        assert torch.equal(blocks.sum(-1), expected.expand(2, -1)), "a block lost tokens to the [UNK] run"
        assert not (blocks & ~eligible).any()
        ctx_idx, tgt_idx, _, stats = jepa_masks(eligible, MaskingConfig(min_keep=2), gen)
        assert tgt_idx.shape[-1] >= 1 and stats["ctx_tgt_overlap"] == 0

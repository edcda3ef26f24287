"""The CPU fast paths: LaneDropout (torch's inverted dropout, cheaper mask), the attention function that uses it
on attention probabilities, the MLM cross-entropy with a hand-written backward and its decoder-fused form, the
predictor's last block computing target outputs only, and the allocator setting. Each must give torch's result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.config import ModelConfig
from harness.perf import retain_freed_memory
from models import build_encoder
from models.attention import LANE_SDPA, lane_sdpa_attention
from models.dropout import LaneDropout, use_lane_dropout
from models.heads import Predictor
from objectives.mlm import cross_entropy, decoder_cross_entropy


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_drop_rate_and_scale_match_inverted_dropout(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 128, 256)  # 2M elements: the drop rate is within 3e-4 of p at 4 sigma
    out = LaneDropout(p).train()(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=1e-3)
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - p)))
    assert out.mean().item() == pytest.approx(1.0, abs=3e-3)  # unbiased


def test_masks_are_uniform_across_lanes_and_positions() -> None:
    torch.manual_seed(1)
    out = LaneDropout(0.5).train()(torch.ones(4096, 64))
    lanes = (out == 0).float().view(-1, 4).mean(0)  # the four 15-bit lanes of each random word
    assert torch.allclose(lanes, torch.full((4,), 0.5), atol=0.01)
    per_column = (out == 0).float().mean(0)
    assert per_column.min() > 0.42 and per_column.max() < 0.58


def test_eval_mode_seeding_and_gradient() -> None:
    drop = LaneDropout(0.2)
    x = torch.randn(8, 32, requires_grad=True)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b)  # seeded by torch's generator, like every other random op
    a.sum().backward()
    kept = a.detach() != 0
    assert torch.allclose(x.grad, kept.float() / 0.8)


def test_encoder_uses_it_everywhere_and_exports_plain_dropout(tmp_path) -> None:
    encoder = build_encoder(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    kinds = {type(m) for m in encoder.modules()}
    assert LaneDropout in kinds and nn.Dropout not in kinds
    encoder.save_pretrained(tmp_path)
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(1000, 2000, (2, 16))
    assert torch.allclose(reloaded(input_ids=ids).last_hidden_state, encoder.eval()(input_ids=ids).last_hidden_state,
                          atol=1e-5)
    assert use_lane_dropout(nn.Sequential(nn.Dropout(0.3)))[0].p == 0.3


@pytest.mark.parametrize("rows", [1, 613])
def test_cross_entropy_matches_torch_in_value_and_gradient(rows: int) -> None:
    torch.manual_seed(rows)
    logits = (3 * torch.randn(rows, 30522)).requires_grad_()
    labels = torch.randint(0, 30522, (rows,))
    ours = cross_entropy(logits, labels)
    (2.5 * ours).backward()  # a non-unit upstream gradient, as under a loss weight
    ours_grad, logits.grad = logits.grad, None
    reference = torch.nn.functional.cross_entropy(logits, labels)
    (2.5 * reference).backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(ours_grad, logits.grad, atol=1e-9, rtol=1e-5)


def heads_view(*shape: int) -> torch.Tensor:
    """(B, L, H, Dh) data seen as (B, H, L, Dh), the strided layout Hugging Face's BERT hands attention."""
    b, h, length, dh = shape
    return torch.randn(b, length, h, dh).transpose(1, 2).requires_grad_()


def test_attention_without_drops_is_sdpa_with_padding() -> None:
    torch.manual_seed(0)
    q, k, v = (heads_view(3, 4, 17, 8) for _ in range(3))
    mask = torch.ones(3, 1, 17, 17, dtype=torch.bool)
    mask[0, ..., 11:] = False  # padded keys of the first row
    # p = 1e-9 rounds to no dropped lane but takes the CPU dropout path.
    ours, _ = lane_sdpa_attention(None, q, k, v, mask, dropout=1e-9, scaling=None)
    ours.square().sum().backward()
    ours_grads = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    reference.square().sum().backward()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    for a, t in zip(ours_grads, (q, k, v), strict=True):
        torch.testing.assert_close(a, t.grad, atol=1e-5, rtol=1e-5)


def test_attention_drops_probabilities_at_rate_p_and_rescales_the_rest() -> None:
    """With the identity as values, the output rows are the (dropped) attention probabilities themselves."""
    torch.manual_seed(0)
    b, h, length, p = 8, 4, 128, 0.1
    q, k = heads_view(b, h, length, 16).detach(), heads_view(b, h, length, 16).detach()
    v = torch.eye(length).expand(b, h, length, length)
    out, _ = lane_sdpa_attention(None, q, k, v, None, dropout=p, scaling=0.25)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1).transpose(1, 2)
    dropped = out == 0
    assert dropped.float().mean().item() == pytest.approx(p, abs=2e-3)  # 524k probabilities
    torch.testing.assert_close(out[~dropped], probs[~dropped] / (1 - p))


def test_encoder_trains_with_lane_attention_and_evaluates_with_plain_sdpa() -> None:
    encoder = build_encoder(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    assert encoder.config._attn_implementation == LANE_SDPA
    ids = torch.randint(1000, 2000, (2, 16))
    attn = torch.ones_like(ids)
    attn[1, 10:] = 0
    torch.manual_seed(0)
    first = encoder.train()(input_ids=ids, attention_mask=attn).last_hidden_state
    torch.manual_seed(0)
    again = encoder(input_ids=ids, attention_mask=attn).last_hidden_state
    assert torch.equal(first, again) and torch.isfinite(first).all()  # seeded dropout, padding handled
    with torch.no_grad():
        ours = encoder.eval()(input_ids=ids, attention_mask=attn).last_hidden_state
        encoder.set_attn_implementation("sdpa")
        plain = encoder(input_ids=ids, attention_mask=attn).last_hidden_state
    assert torch.equal(ours, plain)  # evaluation takes SDPA's own path


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_cross_entropy_matches_linear_then_torch(tied: bool) -> None:
    torch.manual_seed(1)
    vocab, width, rows = 30522, 32, 613
    embedding = nn.Embedding(vocab, width)
    decoder = nn.Linear(width, vocab)
    if tied:
        decoder.weight = embedding.weight  # the tied MLM head: gradients from both uses add up
    x = torch.randn(rows, width, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,))
    ids = torch.randint(0, vocab, (rows,))
    with torch.no_grad():
        labels[:50] = decoder(x[:50]).argmax(1)  # 50 rows the decoder already gets right

    def run(loss_fn) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
        params = [x, decoder.weight, decoder.bias, embedding.weight]
        for t in params:
            t.grad = None
        loss, hits = loss_fn()
        (2.5 * loss + embedding(ids).sum()).backward()  # a loss weight, and another use of the embedding
        return loss.detach(), int(hits), [t.grad.clone() for t in params]

    fused = run(lambda: decoder_cross_entropy(x, decoder, labels, count_hits=True))
    logits = lambda: decoder(x)  # noqa: E731
    plain = run(lambda: (torch.nn.functional.cross_entropy(logits(), labels), (logits().argmax(1) == labels).sum()))
    assert fused[0].item() == pytest.approx(plain[0].item(), rel=1e-6)
    assert fused[1] == plain[1] >= 50
    for ours, reference in zip(fused[2], plain[2], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-7, rtol=1e-4)


def test_decoder_cross_entropy_backward_runs_once() -> None:
    decoder = nn.Linear(8, 100)
    loss, _ = decoder_cross_entropy(torch.randn(5, 8), decoder, torch.randint(0, 100, (5,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_predictor_last_block_gives_the_full_blocks_target_outputs() -> None:
    torch.manual_seed(0)
    predictor = Predictor(encoder_width=64, width=32, depth=3, heads=4, max_positions=128)
    context, ctx_idx = torch.randn(5, 20, 64), torch.randint(0, 128, (5, 20))
    tgt_idx = torch.randint(0, 128, (2, 5, 7))

    def full_blocks() -> torch.Tensor:  # every block over every position, the target rows cut at the end
        ctx = (predictor.embed(context) + predictor.pos(ctx_idx)).repeat(2, 1, 1)
        x = torch.cat([ctx, predictor.mask_token + predictor.pos(tgt_idx.flatten(0, 1))], dim=1)
        for block in predictor.blocks:
            x = block(x)
        return predictor.out(predictor.norm(x[:, ctx.shape[1]:])).view(2, 5, 7, -1)

    ours, reference = predictor(context, ctx_idx, tgt_idx), full_blocks()
    torch.testing.assert_close(ours, reference)
    params = list(predictor.parameters())
    for a, b in zip(torch.autograd.grad(ours.square().sum(), params),
                    torch.autograd.grad(reference.square().sum(), params), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_retained_memory_serves_large_tensors_correctly() -> None:
    try:
        assert retain_freed_memory() is True  # glibc on Linux
        for size in (1, 30, 80):  # MB: below and above glibc's largest mmap threshold
            n = size * 2**18
            x = torch.arange(n, dtype=torch.float32)
            assert x.sum().item() == pytest.approx(n * (n - 1) / 2, rel=1e-6)
            del x
    finally:
        retain_freed_memory(False)  # glibc's defaults again for the rest of the test session

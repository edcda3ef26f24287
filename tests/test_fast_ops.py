"""The CPU fast paths: LaneDropout (torch's inverted dropout, cheaper mask) and the MLM cross-entropy with a
hand-written backward (torch's value and gradient, fewer passes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.config import ModelConfig
from models import build_encoder
from models.dropout import LaneDropout, use_lane_dropout
from objectives.mlm import cross_entropy


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
    lanes = (out == 0).float().view(-1, 4).mean(0)  # the four 16-bit lanes of each random word
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

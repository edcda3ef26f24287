"""The training step on a GPU, as the loop runs it there: masked batches from the data pipeline's masking stage,
moved by the loop's one CPU -> device boundary (harness.stream.to_device), bf16 autocast, fused AdamW, and the
forward compiled (on by default for CUDA). Skipped without a CUDA device; needs neither Ray nor MLflow."""

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import load_config
from harness.step import build_optimizer, compile_enabled, compile_forward, train_step
from harness.stream import MaskingStage, mask_rows, to_device, unpack
from models import momentum_at
from objectives import PretrainModule, mask_plan
from objectives.masking import MaskedBatch, SpecialTokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = Path(__file__).resolve().parents[1] / "studies" / "configs" / "tiny.yaml"
CUDA = torch.device("cuda")


def cpu_batches(cfg, packed_ids, tokenizer, count: int = 3) -> list[MaskedBatch]:
    stage = MaskingStage(cfg.masking, mask_plan(cfg), SpecialTokens.from_tokenizer(tokenizer), cfg.optim.batch_size,
                         cfg.seed)
    masked = mask_rows({"input_ids": packed_ids(count * cfg.optim.batch_size, cfg.data.seq_len).numpy()}, stage, 0)
    return [unpack({k: torch.from_numpy(np.asarray(v[i: i + 1])) for k, v in masked.items()})[0]
            for i in range(count)]


def test_to_device_moves_every_tensor_and_keeps_values(packed_ids, tokenizer) -> None:
    cfg = load_config(TINY, ["objective.name=hybrid"])
    for batch in cpu_batches(cfg, packed_ids, tokenizer):
        moved = to_device(batch, CUDA)
        for f in fields(MaskedBatch):
            x, y = getattr(batch, f.name), getattr(moved, f.name)
            if isinstance(x, torch.Tensor):
                assert y.device.type == "cuda" and torch.equal(x, y.cpu()), f.name
        assert moved.stats == batch.stats


@pytest.mark.parametrize(("objective", "passes"), [("mlm", 2), ("jepa", 2), ("hybrid", 1), ("hybrid", 2)])
def test_compiled_bf16_step_trains_and_matches_eager(objective: str, passes: int, packed_ids, tokenizer) -> None:
    cfg = load_config(TINY, [f"objective.name={objective}", f"objective.passes={passes}", "model.dropout=0.0"])
    assert compile_enabled(cfg, CUDA)  # the default on CUDA
    batches = cpu_batches(cfg, packed_ids, tokenizer)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        module = PretrainModule(cfg).to(CUDA).train()
        forward = compile_forward(module) if compiled else module
        optimizer = build_optimizer(module, cfg)
        target_before = [p.detach().clone() for p in module.nets.target.parameters()] if objective != "mlm" else []
        losses[compiled] = []
        for step, batch in enumerate(batches):
            momentum = momentum_at(step, cfg.optim.max_steps, cfg.objective.ema_start, cfg.objective.ema_end)
            loss, metrics = train_step(forward, module, optimizer, to_device(batch, CUDA), cfg.optim.grad_clip,
                                       momentum, diagnostics=False)
            assert loss.device.type == "cuda" and metrics["grad_norm"].device.type == "cuda"
            losses[compiled].append(loss.item())
        assert all(np.isfinite(losses[compiled]))
        if target_before:  # the EMA target moved towards the trained encoder
            after = list(module.nets.target.parameters())
            assert any(not torch.equal(a, b) for a, b in zip(target_before, after, strict=True))
    # the first step sees the same weights and batch: compiled and eager agree within bf16's precision
    assert losses[True][0] == pytest.approx(losses[False][0], rel=2e-2)

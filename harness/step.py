"""The optimisation step and what sets it up, without Ray: the training loop (harness.worker) and the step
benchmarks (benchmarks/step_mfu.py, benchmarks/gpu_throughput.py) run the same code, and a machine without Ray
can time it."""

from __future__ import annotations

import math

import torch
import torch._inductor.config as inductor_config

from harness.config import Config
from objectives import PretrainModule
from objectives.masking import MaskedBatch


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay; step 0 (the first optimiser step) already uses warmup's first lr."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def worker_threads(cfg: Config) -> int:
    """Torch threads of a worker: train.torch_threads, else its CPU share rounded (at least 1)."""
    return cfg.train.torch_threads or max(1, round(cfg.train.cpus_per_worker))


def ffn_gemm_shape(cfg: Config) -> tuple[int, int, int]:
    """(tokens of a batch, width, FFN width): the GEMM whose matmul rate MFU is measured against on CPU."""
    return cfg.optim.batch_size * cfg.data.seq_len, cfg.model.hidden_size, cfg.model.intermediate_size


def build_optimizer(module: PretrainModule, cfg: Config) -> torch.optim.AdamW:
    """AdamW, fused on CPU and GPU alike (one kernel over all tensors instead of a Python loop per tensor)."""
    o = cfg.optim
    return torch.optim.AdamW(module.param_groups(o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps, fused=True)


def compile_enabled(cfg: Config, device: torch.device) -> bool:
    """train.compile, or by default: on for CUDA, off on CPU (where compiling costs minutes)."""
    return cfg.train.compile if cfg.train.compile is not None else device.type == "cuda"


def train_step(model: torch.nn.Module, module: PretrainModule, optimizer: torch.optim.Optimizer,
               batch: MaskedBatch, grad_clip: float, momentum: float, diagnostics: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """One optimisation step: the objective's forward (bf16 autocast on GPU), backward, gradient clipping of the
    networks' parameters (never the loss weighting's), AdamW, EMA target update. `model` runs the forward (DDP
    and/or compiled); `module` is the bare PretrainModule under it. Returns the loss and the metrics with the
    networks' gradient norm; nothing syncs."""
    device = batch.input_ids.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss, metrics = model(batch, diagnostics=diagnostics)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    # The networks only: at initialisation |dL/dw| of a learned λ is about the whole network's gradient norm, so
    # counting it would make the networks' clip factor depend on the loss gap.
    grad_norm = torch.nn.utils.clip_grad_norm_(module.network_parameters(), max_norm, foreach=True)
    optimizer.step()
    module.nets.update_target(momentum)
    return loss, {**metrics, "grad_norm": grad_norm}


def compile_forward(model: torch.nn.Module) -> torch.nn.Module:
    """The forward under torch.compile with dynamic shapes (the mask lengths change from batch to batch).

    Inductor's coalesce-tiling analysis "does not yet apply to dynamic shapes" (its own config says so) but runs
    anyway, and in torch 2.11 it asserts on the JEPA gathers' kernels (InductorError in tiling_utils.
    get_pw_red_splits, measured on an H200; pytorch/pytorch#181563, fixed upstream by #181793): switched off,
    process-wide, before compiling."""
    inductor_config.triton.coalesce_tiling_analysis = False
    return torch.compile(model, dynamic=True)

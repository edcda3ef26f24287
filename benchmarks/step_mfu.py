"""One training step on this CPU, in one process: MFU against the matmul rate at the model's own GEMM shapes,
hybrid / MLM step ratios, and our MLM step against Hugging Face `BertForMaskedLM`.

    python -m benchmarks.step_mfu [--config studies/configs/small.yaml] [--threads 2] [--rounds 5] [--steps 4]
    python -m benchmarks.step_mfu --profile mlm        # torch.profiler table of one variant's steps

Variants (same encoder size, batch and real Wikipedia batch, AdamW, fp32):
  mlm, hybrid-p1, hybrid-p2   what a Ray worker runs per step: the masks drawn as the loop draws them, then
                              harness.pretrain.train_step (objective forward, backward, clip, fused AdamW, EMA)
  mlm-before                  mlm without any issue-6 CPU change: torch's nn.Dropout, torch's SDPA (its math
                              path under attention dropout), per-tensor AdamW, nn.Linear + F.cross_entropy,
                              glibc malloc's defaults
  mlm-torch-attention         mlm with torch's SDPA instead of models.attention (only that change undone)
  mlm-unfused-loss            mlm with nn.Linear + F.cross_entropy instead of the fused decoder cross-entropy
  mlm-bool-mask               mlm with session 2's dropout mask (16-bit lanes of full-range random words, a bool
                              compare, then `where`) instead of models.dropout.scaled_mask's float-only one
  mlm-glibc-default           mlm with glibc malloc's defaults (the others run with
                              harness.perf.retain_freed_memory, as the training workers do)
  mlm-attn0                   mlm without dropout on attention probabilities (CPU SDPA's flash kernel)
  hf-mlm                      BertForMaskedLM (SDPA), labels on the same masked positions, vocab head on every
                              position (the library's way), AdamW with the same settings
Each round runs `steps` steps of every variant in turn (interleaved: this machine is noisy), each step timed,
and then times each GEMM shape of the step (objectives.flops.step_matmuls: encoder, MLM head, predictor, EMA
target). Reported per variant: the median and the best step; "step vs mlm" pairs the variant's median with
mlm's median of the same round, then takes the median over rounds.
MFU = analytic model FLOP/s / the GEMM-weighted matmul rate: total GEMM FLOPs of a step divided by the time those
GEMMs take at the rates measured for their shapes (the best a step could do if everything but the matmuls were
free). Both sides are typical: the median step against, per shape, the median over rounds of a sustained
matmul rate (back-to-back matmuls for 0.3 s), so machine noise weighs on both alike. The stricter column puts
the median step against each shape's best single matmul of the run instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers import BertConfig, BertForMaskedLM

import models.dropout as dropout_module
import objectives.mlm as mlm_module
from harness.config import Config, load_config, resolve_location
from harness.perf import retain_freed_memory, time_matmuls
from harness.prepare import load_tokenizer, pack_documents
from harness.pretrain import build_optimizer, train_step
from models import momentum_at
from models.dropout import LaneDropout
from objectives import PretrainModule, mask_plan
from objectives.flops import Gemm, StepShape, expected_shape, step_matmuls
from objectives.masking import SpecialTokens, mask_batch

MLM = ["objective.name=mlm"]
VARIANTS = {"mlm": MLM, "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"], "hf-mlm": MLM,
            "mlm-before": MLM, "mlm-torch-attention": MLM, "mlm-unfused-loss": MLM, "mlm-bool-mask": MLM,
            "mlm-glibc-default": MLM,
            "mlm-attn0": [*MLM, "model.attention_dropout=0.0"]}
# The issue-6 CPU changes each variant runs without.
WITHOUT = {"mlm-before": {"lane_dropout", "lane_attention", "fused_loss", "retained_memory", "fused_adamw"},
           "mlm-torch-attention": {"lane_attention"}, "mlm-unfused-loss": {"fused_loss"},
           "mlm-bool-mask": {"float_mask"},
           "mlm-glibc-default": {"retained_memory"}}


def real_batch(cfg: Config):
    """A batch of packed windows of real Wikipedia text, as the prepared shards hold them."""
    tokenizer = load_tokenizer(resolve_location(cfg.data.tokenizer))
    source = resolve_location(cfg.data.source)
    texts = pq.read_table(sorted(Path(source).glob("*.parquet"))[0],
                          columns=["text"]).column("text").to_pylist()[:200]
    docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    packed = pack_documents(docs, cfg.data.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
    ids = torch.from_numpy(packed[:cfg.optim.batch_size]).long()
    return ids, SpecialTokens.from_tokenizer(tokenizer)


class Runner:
    """One variant: its model, optimiser and a fresh masked batch per step (masking is part of the step)."""

    def __init__(self, name: str, cfg: Config, ids: torch.Tensor, specials: SpecialTokens):
        self.name, self.cfg, self.ids, self.specials = name, cfg, ids, specials
        torch.manual_seed(0)
        if name == "hf-mlm":
            m = cfg.model
            self.model = BertForMaskedLM._from_config(BertConfig(
                vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
                max_position_embeddings=m.max_position_embeddings, hidden_dropout_prob=m.dropout,
                attention_probs_dropout_prob=m.dropout), attn_implementation="sdpa")
            o = cfg.optim
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                               weight_decay=o.weight_decay, fused=True)
        else:
            self.model = PretrainModule(cfg)
            self.optimizer = build_optimizer(self.model, cfg)
        self.without = WITHOUT.get(name, set())
        if "lane_dropout" in self.without:
            restore_torch_dropout(self.model)
        if "lane_attention" in self.without:
            self.model.nets.encoder.set_attn_implementation("sdpa")
        if "fused_adamw" in self.without:
            self.optimizer = torch.optim.AdamW(self.model.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                                               betas=cfg.optim.betas, eps=cfg.optim.eps, foreach=False)
        self.model.train()
        self.step_index = 0

    def step(self) -> None:
        """What one iteration of the training loop does: draw the masks, then harness.pretrain.train_step."""
        generator = torch.Generator().manual_seed(self.step_index)
        o = self.cfg.optim
        momentum = momentum_at(self.step_index, o.max_steps, self.cfg.objective.ema_start, self.cfg.objective.ema_end)
        self.step_index += 1
        batch = mask_batch(self.ids, torch.ones_like(self.ids), mask_plan(self.cfg), self.cfg.masking, self.specials,
                           generator)
        if self.name == "hf-mlm":
            labels = torch.full_like(self.ids, -100).flatten()
            labels[batch.mlm_positions] = batch.mlm_labels
            loss = self.model(input_ids=batch.mlm_input_ids, attention_mask=batch.attention_mask,
                              labels=labels.view_as(self.ids)).loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip, foreach=True)
            self.optimizer.step()
            return
        with contextlib.ExitStack() as stack:
            if "retained_memory" in self.without:
                stack.enter_context(glibc_default_malloc())
            if "fused_loss" in self.without:
                stack.enter_context(unfused_loss())
            if "float_mask" in self.without:
                stack.enter_context(bool_mask())
            train_step(self.model, self.model, self.optimizer, batch, o.grad_clip, momentum, diagnostics=False)

    def shape(self) -> StepShape:
        shape = expected_shape(self.cfg)
        if self.name == "hf-mlm":  # the vocab head on every position
            return dataclasses.replace(shape, mlm_positions=shape.batch * shape.seq_len)
        return shape

    def gemms(self) -> list[Gemm]:
        return step_matmuls(self.cfg, self.shape())[0]

    def flops(self) -> float:
        gemms, attention = step_matmuls(self.cfg, self.shape())
        return sum(g.flops for g in gemms) + attention


@contextlib.contextmanager
def glibc_default_malloc():
    retain_freed_memory(False)
    try:
        yield
    finally:
        retain_freed_memory(True)


@contextlib.contextmanager
def unfused_loss():
    """objectives.mlm with nn.Linear + F.cross_entropy instead of its fused decoder cross-entropy."""
    def linear_then_cross_entropy(x, decoder, labels, count_hits=False):
        return torch.nn.functional.cross_entropy(decoder(x), labels), torch.zeros((), dtype=torch.long)

    saved = mlm_module.decoder_cross_entropy
    mlm_module.decoder_cross_entropy = linear_then_cross_entropy
    try:
        yield
    finally:
        mlm_module.decoder_cross_entropy = saved


@contextlib.contextmanager
def bool_mask():
    """models.dropout with session 2's mask: 16-bit lanes of full-range random words, compared into a bool
    tensor, then `where` (both several times slower here than a float pass)."""
    def where_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
        threshold = -(2**15) + round(p * 2**16)
        words = torch.empty((shape.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[: shape.numel()].view(shape) >= threshold
        return torch.where(keep, 1.0 / (1.0 - p), 0.0).to(dtype)

    saved = dropout_module.scaled_mask
    dropout_module.scaled_mask = where_mask
    try:
        yield
    finally:
        dropout_module.scaled_mask = saved


def restore_torch_dropout(model: torch.nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, LaneDropout):
            setattr(model, name, torch.nn.Dropout(child.p))
        else:
            restore_torch_dropout(child)


def matmul_rates(m: int, k: int, n: int, seconds: float) -> tuple[float, float]:
    """(sustained, best) FLOP/s of back-to-back (m x k) @ (k x n) matmuls for >= `seconds`: the whole block's
    rate, comparable with a step's, and the best single matmul's (what harness.perf.measure_matmul_flops
    reports as the CPU peak)."""
    times = time_matmuls(m, k, n, torch.device("cpu"), min_seconds=seconds, min_repeats=3)
    return 2 * m * k * n * len(times) / sum(times), 2 * m * k * n / min(times)


def gemm_rate(gemms: list[Gemm], rates: dict[tuple[int, int, int], float]) -> float:
    """FLOP/s of a step's GEMMs if each ran at the rate measured for its shape: their FLOPs over their times."""
    return sum(g.flops for g in gemms) / sum(g.flops / rates[key(g)] for g in gemms)


def key(gemm: Gemm) -> tuple[int, int, int]:
    return max(1, round(gemm.m)), gemm.k, gemm.n


def profile(runner: Runner, steps: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    runner.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--profile", choices=list(VARIANTS), help="profile this variant instead of timing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the training workers do
    base = load_config(args.config, args.overrides)
    ids, specials = real_batch(base)
    names = [args.profile] if args.profile else args.variants
    runners = {n: Runner(n, load_config(args.config, [*args.overrides, *VARIANTS[n]]), ids, specials) for n in names}
    if args.profile:
        profile(runners[args.profile], args.steps)
        return
    for runner in runners.values():
        runner.step()  # warm-up
    steps: dict[str, list[list[float]]] = defaultdict(list)  # per variant, per round: each step's seconds
    sustained: dict[tuple[int, int, int], list[float]] = defaultdict(list)  # per GEMM shape, per round
    best_single: dict[tuple[int, int, int], float] = defaultdict(float)  # per GEMM shape, over the run
    for r in range(args.rounds):
        for name, runner in runners.items():
            steps[name].append([])
            for _ in range(args.steps):
                start = time.perf_counter()
                runner.step()
                steps[name][-1].append(time.perf_counter() - start)
        for shape in {key(g) for runner in runners.values() for g in runner.gemms()}:
            rate, best = matmul_rates(*shape, seconds=0.3)
            sustained[shape].append(rate)
            best_single[shape] = max(best_single[shape], best)
        print(f"round {r + 1}: " + ", ".join(f"{n} {statistics.median(steps[n][-1]):.3f}s" for n in runners),
              flush=True)

    tokens = base.optim.batch_size * base.data.seq_len
    print(f"\n{base.model.num_layers} x {base.model.hidden_size}, batch {base.optim.batch_size} x {base.data.seq_len}, "
          f"{args.threads} threads, {args.rounds} rounds of {args.steps} steps")
    print("| variant | median step s | best step s | tokens/s (median) | GFLOP/step | MFU | "
          "MFU vs best single matmul | step vs mlm | FLOPs vs mlm |")
    print("|---|---|---|---|---|---|---|---|---|")
    typical = {shape: statistics.median(rates) for shape, rates in sustained.items()}
    for name, runner in runners.items():
        median = statistics.median(t for round_steps in steps[name] for t in round_steps)
        best = min(t for round_steps in steps[name] for t in round_steps)
        mfu = runner.flops() / median / gemm_rate(runner.gemms(), typical)
        mfu_strict = runner.flops() / median / gemm_rate(runner.gemms(), best_single)
        # Paired within each round (both ran minutes apart at most), then the median over rounds.
        vs_mlm = statistics.median(statistics.median(a) / statistics.median(b)
                                   for a, b in zip(steps[name], steps["mlm"], strict=True)) if "mlm" in steps else 0
        flops_vs = runner.flops() / runners["mlm"].flops() if "mlm" in runners else 0
        print(f"| {name} | {median:.3f} | {best:.3f} | {tokens / median:.0f} | {runner.flops() / 1e9:.1f} | "
              f"{mfu:.2f} | {mfu_strict:.2f} | {vs_mlm:.2f} | {flops_vs:.2f} |")


if __name__ == "__main__":
    main()

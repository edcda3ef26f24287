"""One training step on this CPU, in one process: MFU against the matmul rate at the model's own GEMM shapes,
hybrid / MLM step ratios, and our MLM step against Hugging Face `BertForMaskedLM`.

    python -m benchmarks.step_mfu [--config studies/configs/small.yaml] [--threads 2] [--rounds 5] [--steps 4]
    python -m benchmarks.step_mfu --profile mlm        # torch.profiler table of one variant's steps

Variants (same encoder size, batch and real Wikipedia batch, AdamW, fp32):
  mlm, hybrid-p1, hybrid-p2   PretrainModule + the registry objective + the loop's optimiser (what Ray runs)
  mlm-before                  mlm as it was before the issue-6 changes: torch's nn.Dropout, per-tensor AdamW,
                              F.cross_entropy
  mlm-attn0                   mlm without dropout on attention probabilities (CPU SDPA keeps its flash kernel)
  hf-mlm                      BertForMaskedLM (SDPA), labels on the same masked positions, vocab head on every
                              position (the library's way), AdamW with the same settings
Each round runs `steps` steps of every variant in turn (interleaved: this machine is noisy) and then times each
GEMM shape of the model; per variant the median step time over rounds is reported.
MFU = analytic model FLOP/s / the GEMM-weighted matmul rate: total GEMM FLOPs of a step divided by the time those
GEMMs take at the rates measured for their shapes in the same round (the best a step could do if everything but
the matmuls were free).
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

import objectives.mlm as mlm_module
from harness.config import Config, load_config, resolve_location
from harness.perf import measure_matmul_flops
from harness.prepare import load_tokenizer, pack_documents
from harness.pretrain import build_optimizer
from models.dropout import LaneDropout
from objectives import PretrainModule, mask_plan
from objectives.flops import expected_shape, train_flops_per_step
from objectives.masking import SpecialTokens, mask_batch

VARIANTS = {"mlm": ["objective.name=mlm"], "hybrid-p1": ["objective.name=hybrid", "objective.passes=1"],
            "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"], "hf-mlm": ["objective.name=mlm"],
            "mlm-before": ["objective.name=mlm"], "mlm-attn0": ["objective.name=mlm", "model.attention_dropout=0.0"]}


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
        if name == "mlm-before":
            restore_torch_dropout(self.model)
            self.optimizer = torch.optim.AdamW(self.model.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                                               betas=cfg.optim.betas, eps=cfg.optim.eps, foreach=False)
        self.model.train()
        self.step_index = 0

    def step(self) -> None:
        generator = torch.Generator().manual_seed(self.step_index)
        self.step_index += 1
        batch = mask_batch(self.ids, torch.ones_like(self.ids), mask_plan(self.cfg), self.cfg.masking, self.specials,
                           generator)
        if self.name == "hf-mlm":
            labels = torch.full_like(self.ids, -100).flatten()
            labels[batch.mlm_positions] = batch.mlm_labels
            loss = self.model(input_ids=batch.mlm_input_ids, attention_mask=batch.attention_mask,
                              labels=labels.view_as(self.ids)).loss
        elif self.name == "mlm-before":
            with torch_cross_entropy():
                loss, _ = self.model(batch)
        else:
            loss, _ = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip, foreach=True)
        self.optimizer.step()

    def flops(self) -> float:
        if self.name != "hf-mlm":
            return train_flops_per_step(self.cfg)
        shape = expected_shape(self.cfg)  # the vocab head on every position
        tokens = shape.batch * shape.seq_len
        return train_flops_per_step(self.cfg, dataclasses.replace(shape, mlm_positions=tokens))


@contextlib.contextmanager
def torch_cross_entropy():
    """objectives.mlm with torch's F.cross_entropy instead of its own (for the mlm-before variant's steps)."""
    saved = mlm_module.cross_entropy
    mlm_module.cross_entropy = torch.nn.functional.cross_entropy
    try:
        yield
    finally:
        mlm_module.cross_entropy = saved


def restore_torch_dropout(model: torch.nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, LaneDropout):
            setattr(model, name, torch.nn.Dropout(child.p))
        else:
            restore_torch_dropout(child)


def gemm_shapes(runner: Runner) -> list[tuple[int, int, int, float]]:
    """(m, k, n, count) of the forward GEMMs of one step; the backward runs two GEMMs of the same sizes each."""
    cfg = runner.cfg
    m, s = cfg.model, expected_shape(cfg)
    tokens, d, f = s.batch * s.seq_len, m.hidden_size, m.intermediate_size
    masked = tokens if runner.name == "hf-mlm" else max(1, round(s.mlm_positions))
    layers = m.num_layers
    shapes = [(tokens, d, d, 4 * layers), (tokens, d, f, layers), (tokens, f, d, layers)]
    if cfg.objective.name in ("mlm", "hybrid"):
        shapes += [(masked, d, d, 1), (masked, d, m.vocab_size, 1)]
    return shapes


def gemm_rate(shapes: list[tuple[int, int, int, float]], rates: dict) -> float:
    flops = sum(2 * a * b * c * n for a, b, c, n in shapes)
    seconds = sum(2 * a * b * c * n / rates[(a, b, c)] for a, b, c, n in shapes)
    return flops / seconds


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
    base = load_config(args.config, args.overrides)
    ids, specials = real_batch(base)
    names = [args.profile] if args.profile else args.variants
    runners = {n: Runner(n, load_config(args.config, [*args.overrides, *VARIANTS[n]]), ids, specials) for n in names}
    if args.profile:
        profile(runners[args.profile], args.steps)
        return
    for runner in runners.values():
        runner.step()  # warm-up
    times: dict[str, list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        for name, runner in runners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                runner.step()
            times[name].append((time.perf_counter() - start) / args.steps)
        rates = {}
        for runner in runners.values():
            for a, b, c, _ in gemm_shapes(runner):
                if (a, b, c) not in rates:
                    rates[(a, b, c)] = measure_matmul_flops(a, b, c, torch.device("cpu"), min_seconds=0.3)
        for name, runner in runners.items():
            ratios[name].append(runner.flops() / times[name][-1] / gemm_rate(gemm_shapes(runner), rates))
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in runners), flush=True)

    tokens = base.optim.batch_size * base.data.seq_len
    ref = statistics.median(times["mlm"]) if "mlm" in times else None
    print(f"\n{base.model.num_layers} x {base.model.hidden_size}, batch {base.optim.batch_size} x {base.data.seq_len}, "
          f"{args.threads} threads, medians over {args.rounds} rounds of {args.steps} steps")
    print("| variant | step s | tokens/s | GFLOP/step | GFLOP/s | MFU vs GEMM-weighted matmul | step vs mlm | "
          "FLOPs vs mlm |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runner in runners.items():
        t = statistics.median(times[name])
        f = runner.flops()
        print(f"| {name} | {t:.3f} | {tokens / t:.0f} | {f / 1e9:.1f} | {f / t / 1e9:.1f} | "
              f"{statistics.median(ratios[name]):.2f} | {t / ref:.2f} | "
              f"{f / runners['mlm'].flops():.2f} |" if ref else "")


if __name__ == "__main__":
    main()

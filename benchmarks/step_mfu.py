"""One training step on this CPU, in one process: model GFLOP/s, MFU against the matmul rate at the step's own
GEMM shapes, hybrid / MLM step ratios, and our MLM step against Hugging Face `BertForMaskedLM`.

    python -m benchmarks.step_mfu [--config studies/configs/small.yaml] [--threads 2] [--rounds 5] [--steps 4]
    python -m benchmarks.step_mfu --compile ...          # add the torch.compile variants (minutes to compile)
    python -m benchmarks.step_mfu --profile hybrid-p2    # torch.profiler table of one variant's steps
    python -m benchmarks.step_mfu --count-flops --config studies/configs/tiny.yaml model.dropout=0.0 ...
                                                         # analytic FLOPs vs torch's FlopCounterMode

Variants (same encoder size, batch, real packed Wikipedia rows; fp32):
  mlm, hybrid-p1, hybrid-p2   what a Ray worker runs per step: harness.step.train_step (the objective's forward,
                              backward, clipping, fused AdamW, the EMA update) on a batch whose masks were drawn by
                              harness.stream's masking stage (as Ray Data draws them), unpacked as the worker gets it
  hf-mlm                      BertForMaskedLM (SDPA), the same masked positions as labels, the vocabulary head and the
                              cross-entropy on every position (the library's way), fused AdamW with the same settings
  hybrid-p1-prev, hybrid-p2-prev
                              the hybrid step with the JEPA parts as they were before the current hybrid-step
                              changes (gather with an expanded index and a reordering copy, the target
                              layer-normed before the read, the predictor's input built by repeat + cat, q/k/v
                              unbound from a permuted view); opt-in: name them in --variants
  mlm-compile, hybrid-p1-compile, hybrid-p2-compile
                              the same step with `harness.step.compile_forward(module)` as the forward, as the training
                              loop does with train.compile (opt-in: --compile, or name them in --variants); compiled
                              and warmed up before the timed rounds, the compile time printed
The masked batches (a cycle of --batches distinct ones per variant) are drawn before the timings: in training the
masks come from the data pipeline, not from the training process.

Each round runs `steps` steps of every variant in turn (interleaved: this machine is noisy), each step timed, and
then times each GEMM shape of the steps (objectives.step_matmuls: encoder, MLM head, predictor, EMA target) for
0.3 s. A round counts only if other processes kept at most --max-foreign-cpu cores busy meanwhile (/proc/stat's
busy time minus this process's CPU time, steal included): on a shared 2-core machine a neighbour preempting one of
the two torch threads slows a step several-fold. Reported per variant, over the counted rounds:
  median step       over all timed steps of the run
  model GFLOP/s     objectives.train_flops_per_step (analytic, the config's expected mask sizes; what the training
                    loop logs as perf/model_flops_per_s) / the median step. "these batches / expected": the mean
                    analytic FLOPs at the cycled batches' exact mask sizes over the expected ones (ragged masks
                    are truncated to the batch minimum, so a real batch does a little less JEPA work)
  MFU               model FLOP/s / the GEMM-weighted matmul rate: the step's GEMM FLOPs over the time those GEMMs
                    take at the rates measured for their shapes (the best the step could do if everything but the
                    matmuls were free). Rate per shape: the median over rounds of a sustained rate (back-to-back
                    matmuls for 0.3 s); the stricter column uses each shape's best single matmul of the run
  step vs ref       per round the variant's median step over its reference's (hybrid and hf-mlm: mlm; a compiled
                    or -prev variant: its twin), then the median over rounds
The summary lines give hybrid / mlm step time and ours / HF tokens/s (= hf-mlm's step over mlm's, paired per round).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import BertConfig, BertForMaskedLM

import objectives.hybrid as hybrid_module
import objectives.jepa as jepa_module
from harness.config import Config, load_config, resolve_location
from harness.perf import time_matmuls
from harness.prepare import load_tokenizer, pack_documents
from harness.step import build_optimizer, compile_forward, train_step
from harness.stream import MaskingStage, mask_rows, unpack
from models import encode, momentum_at
from models.heads import Block, Predictor
from objectives import PretrainModule, mask_plan, step_matmuls, train_flops_per_step
from objectives.flops import Gemm, expected_shape, measured_flops, shape_of
from objectives.masking import IGNORE_INDEX, MaskedBatch, SpecialTokens

MLM = ["objective.name=mlm"]
HYBRID_P1 = ["objective.name=hybrid", "objective.passes=1"]
HYBRID_P2 = ["objective.name=hybrid", "objective.passes=2"]
VARIANTS = {"mlm": MLM, "hybrid-p1": HYBRID_P1, "hybrid-p2": HYBRID_P2, "hf-mlm": MLM,
            "hybrid-p1-prev": HYBRID_P1, "hybrid-p2-prev": HYBRID_P2,
            "mlm-compile": MLM, "hybrid-p1-compile": HYBRID_P1, "hybrid-p2-compile": HYBRID_P2}
EAGER = ["mlm", "hybrid-p1", "hybrid-p2", "hf-mlm"]
COMPILED = [name for name in VARIANTS if name.endswith("-compile")]


def reference(name: str) -> str:
    """What a variant's step is compared with: a compiled or -prev variant with its twin, the others with mlm."""
    for suffix in ("-compile", "-prev"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return "mlm"


def real_rows(cfg: Config, rows: int) -> tuple[torch.Tensor, SpecialTokens]:
    """`rows` packed windows of real Wikipedia text, as the prepared shards hold them, and the special tokens."""
    tokenizer = load_tokenizer(resolve_location(cfg.data.tokenizer))
    files = sorted(Path(resolve_location(cfg.data.source)).glob("*.parquet"))
    texts = pq.read_table(files[0], columns=["text"]).column("text").to_pylist()
    docs, packed = 100, np.zeros((0, cfg.data.seq_len), dtype=np.int64)
    while len(packed) < rows and docs < len(texts) * 2:  # enough documents for `rows` windows
        ids = tokenizer(texts[:docs], add_special_tokens=False)["input_ids"]
        packed = pack_documents(ids, cfg.data.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
        docs *= 2
    if len(packed) < rows:
        raise ValueError(f"{files[0]} packs into {len(packed)} rows of {cfg.data.seq_len}, fewer than {rows}")
    return torch.from_numpy(packed[:rows]).long(), SpecialTokens.from_tokenizer(tokenizer)


def real_batch(cfg: Config) -> tuple[torch.Tensor, SpecialTokens]:
    """One batch (optim.batch_size rows) of real packed text, and the special tokens."""
    return real_rows(cfg, cfg.optim.batch_size)


def masked_batches(cfg: Config, ids: torch.Tensor, specials: SpecialTokens, epoch: int = 0) -> list[MaskedBatch]:
    """The masked batches of `ids` for `cfg`'s objective, drawn as the data pipeline draws them
    (harness.stream.mask_rows: a seeded shuffle, then every mask of each batch) and unpacked as a worker gets
    them (harness.stream.unpack of one row)."""
    stage = MaskingStage(cfg.masking, mask_plan(cfg), specials, cfg.optim.batch_size, cfg.seed)
    columns = mask_rows({"input_ids": ids.numpy()}, stage, epoch)
    count = len(columns["input_ids"])
    return [unpack({k: torch.as_tensor(np.asarray(v[i:i + 1])) for k, v in columns.items()})[0] for i in range(count)]


def hf_model(cfg: Config) -> BertForMaskedLM:
    m = cfg.model
    return BertForMaskedLM._from_config(BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings, hidden_dropout_prob=m.dropout,
        attention_probs_dropout_prob=m.dropout if m.attention_dropout is None else m.attention_dropout),
        attn_implementation="sdpa")


class Runner:
    """One variant: its model, optimiser and a cycle of masked batches (drawn beforehand, as the data path does)."""

    def __init__(self, name: str, cfg: Config, batches: list[MaskedBatch]):
        self.name, self.cfg, self.batches = name, cfg, batches
        torch.manual_seed(0)
        o = cfg.optim
        if name == "hf-mlm":
            self.model = hf_model(cfg)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                               weight_decay=o.weight_decay, fused=True)
            self.labels = []
            for b in batches:
                labels = torch.full((b.input_ids.numel(),), IGNORE_INDEX, dtype=torch.long)
                labels[b.mlm_positions] = b.mlm_labels
                self.labels.append(labels.view_as(b.input_ids))
        else:
            self.model = PretrainModule(cfg)
            self.optimizer = build_optimizer(self.model, cfg)
        self.model.train()
        self.forward = compile_forward(self.model) if name.endswith("-compile") else self.model
        self.exact_flops = statistics.mean(self.flops(b) for b in batches)
        self.step_index = 0

    def step(self) -> None:
        """What one iteration of the training loop does with a batch it has received."""
        i = self.step_index % len(self.batches)
        batch, o = self.batches[i], self.cfg.optim
        momentum = momentum_at(self.step_index, o.max_steps, self.cfg.objective.ema_start, self.cfg.objective.ema_end)
        self.step_index += 1
        if self.name == "hf-mlm":
            loss = self.model(input_ids=batch.mlm_input_ids, attention_mask=batch.attention_mask,
                              labels=self.labels[i]).loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip, foreach=True)
            self.optimizer.step()
            return
        with previous_jepa_parts() if self.name.endswith("-prev") else contextlib.nullcontext():
            train_step(self.forward, self.model, self.optimizer, batch, o.grad_clip, momentum, diagnostics=False)

    def matmuls(self, batch: MaskedBatch | None = None) -> tuple[list[Gemm], float]:
        """The step's GEMMs and attention FLOPs: at the config's expected mask sizes, or at `batch`'s own."""
        shape = expected_shape(self.cfg, mask_plan(self.cfg).hide_targets) if batch is None else shape_of(batch)
        if self.name == "hf-mlm":  # the vocabulary head on every position
            shape = dataclasses.replace(shape, mlm_positions=shape.batch * shape.seq_len)
        return step_matmuls(self.cfg, shape)

    def gemms(self) -> list[Gemm]:
        return self.matmuls()[0]

    def flops(self, batch: MaskedBatch | None = None) -> float:
        """Model FLOPs of a step: objectives.train_flops_per_step (HF: its head on every position)."""
        if self.name != "hf-mlm":
            return train_flops_per_step(self.cfg, None if batch is None else shape_of(batch))
        gemms, attention = self.matmuls(batch)
        return sum(g.flops for g in gemms) + attention


# ---- the JEPA parts as they were before the current hybrid-step changes (the -prev variants; same results)


def _prev_gather_positions(x: Tensor, idx: Tensor) -> Tensor:
    flat = jepa_module.row_positions(idx)
    return jepa_module.split_rows(x.gather(1, flat[..., None].expand(-1, -1, x.shape[-1])), idx)


@torch.no_grad()
def _prev_forward_target(module, batch: MaskedBatch) -> Tensor:
    hidden = encode(module.nets.target, batch.input_ids, batch.attention_mask)
    return _prev_gather_positions(F.layer_norm(hidden, hidden.shape[-1:]), batch.tgt_idx)


def _prev_block_forward(self: Block, x: Tensor, outputs_from: int = 0) -> Tensor:
    b, n, w = x.shape
    h = self.norm1(x)
    if outputs_from == 0:
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
    else:
        x = x[:, outputs_from:]
        q = F.linear(h[:, outputs_from:], self.qkv.weight[:w], self.qkv.bias[:w])
        q = q.view(b, -1, self.heads, w // self.heads).transpose(1, 2)
        kv = F.linear(h, self.qkv.weight[w:], self.qkv.bias[w:])
        k, v = kv.view(b, n, 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], w)
    x = x + self.proj(attn)
    return x + self.mlp(self.norm2(x))


def _prev_predictor_forward(self: Predictor, context: Tensor, ctx_idx: Tensor, tgt_idx: Tensor) -> Tensor:
    blocks, batch, tgt_len = tgt_idx.shape
    ctx = (self.embed(context) + self.pos(ctx_idx)).repeat(blocks, 1, 1)
    queries = self.mask_token + self.pos(tgt_idx.flatten(0, 1))
    x = torch.cat([ctx, queries], dim=1)
    for block in self.blocks[:-1]:
        x = block(x)
    x = self.blocks[-1](x, outputs_from=ctx.shape[1])
    return self.out(self.norm(x)).view(blocks, batch, tgt_len, -1)


@contextlib.contextmanager
def previous_jepa_parts():
    saved = (jepa_module.forward_target, hybrid_module.gather_positions, Block.forward, Predictor.forward)
    jepa_module.forward_target, hybrid_module.gather_positions = _prev_forward_target, _prev_gather_positions
    Block.forward, Predictor.forward = _prev_block_forward, _prev_predictor_forward
    try:
        yield
    finally:
        jepa_module.forward_target, hybrid_module.gather_positions, Block.forward, Predictor.forward = saved


def matmul_rates(m: int, k: int, n: int, seconds: float) -> tuple[float, float]:
    """(sustained, best) FLOP/s of back-to-back (m x k) @ (k x n) matmuls for >= `seconds`: the whole block's
    rate, comparable with a step's, and the best single matmul's."""
    times = time_matmuls(m, k, n, torch.device("cpu"), min_seconds=seconds, min_repeats=3)
    return 2 * m * k * n * len(times) / sum(times), 2 * m * k * n / min(times)


def gemm_rate(gemms: list[Gemm], rates: dict[tuple[int, int, int], float]) -> float:
    """FLOP/s of a step's GEMMs if each ran at the rate measured for its shape: their FLOPs over their times."""
    return sum(g.flops for g in gemms) / sum(g.flops / rates[key(g)] for g in gemms)


def key(gemm: Gemm) -> tuple[int, int, int]:
    return max(1, round(gemm.m)), gemm.k, gemm.n


class Contention:
    """How many cores other processes (and the hypervisor: steal time) kept busy since construction: the machine's
    busy time from /proc/stat minus this process's own CPU time, over the wall time. None without /proc/stat."""

    def __init__(self) -> None:
        self.start = self.read()

    @staticmethod
    def read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return busy, time.process_time(), time.perf_counter()

    def foreign_cores(self) -> float | None:
        end = self.read()
        if self.start is None or end is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


def warm_up(runners: dict[str, Runner], steps: int) -> None:
    """A few untimed steps of every variant; a compiled one compiles here (its first steps print their time)."""
    for name, runner in runners.items():
        for i in range(steps):
            start = time.perf_counter()
            runner.step()
            if name.endswith("-compile"):
                print(f"{name} warm-up step {i + 1}: {time.perf_counter() - start:.1f}s", flush=True)


def profile(runner: Runner, steps: int, shapes: bool, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for _ in range(steps):
            runner.step()
    table = prof.key_averages(group_by_input_shape=shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60,
                      max_shapes_column_width=80))


SHIPPED = ("tiny", "small", "paper", "base")


def count_flops(config: str, overrides: list[str]) -> None:
    """objectives.train_flops_per_step at a real batch's exact mask sizes against torch's FlopCounterMode over one
    forward + backward of each objective; then the analytic FLOPs per step of the shipped configs."""
    print("| objective | counted GFLOP | analytic GFLOP | analytic / counted |")
    print("|---|---|---|---|")
    for name, extra in [("mlm", MLM), ("jepa", ["objective.name=jepa"]), ("hybrid, passes 2", HYBRID_P2),
                        ("hybrid, passes 1", HYBRID_P1)]:
        cfg = load_config(config, [*overrides, *extra])
        ids, specials = real_rows(cfg, cfg.optim.batch_size)
        batch = masked_batches(cfg, ids, specials)[0]
        torch.manual_seed(0)
        module = PretrainModule(cfg)

        def step(module: PretrainModule = module, batch: MaskedBatch = batch) -> None:
            loss, _ = module(batch)
            loss.backward()

        counted, analytic = measured_flops(step), train_flops_per_step(cfg, shape_of(batch))
        print(f"| {name} | {counted / 1e9:.3f} | {analytic / 1e9:.3f} | {analytic / counted:.3f} |")
    root = Path(__file__).resolve().parents[1] / "studies" / "configs"
    print("\nanalytic FLOPs per step and worker (expected mask sizes, the config's objective): " + ", ".join(
        f"{c} {train_flops_per_step(load_config(root / f'{c}.yaml')) / 1e9:.2f} GFLOP" for c in SHIPPED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batches", type=int, default=8, help="distinct masked batches each variant cycles through")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help=f"default: {' '.join(EAGER)} (and with --compile: {' '.join(COMPILED)})")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variants")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    parser.add_argument("--max-foreign-cpu", type=float, default=0.25,
                        help="count only rounds during which other processes kept at most this many cores busy")
    parser.add_argument("--profile", choices=list(VARIANTS), help="profile this variant instead of timing")
    parser.add_argument("--profile-shapes", action="store_true", help="profile: group the ops by input shape")
    parser.add_argument("--profile-rows", type=int, default=40)
    parser.add_argument("--count-flops", action="store_true",
                        help="print analytic FLOPs vs torch's FlopCounterMode instead of timing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.count_flops:
        count_flops(args.config, args.overrides)
        return
    base = load_config(args.config, args.overrides)
    ids, specials = real_rows(base, args.batches * base.optim.batch_size)
    if args.profile:
        names = [args.profile]
    else:
        names = args.variants or (EAGER + COMPILED if args.compile else EAGER)
        names = ["mlm", *[n for n in names if n != "mlm"]]  # every ratio needs mlm
        names += [reference(n) for n in names if reference(n) not in names]
    runners = {}
    for name in names:
        cfg = load_config(args.config, [*args.overrides, *VARIANTS[name]])
        runners[name] = Runner(name, cfg, masked_batches(cfg, ids, specials))
    if args.profile:
        warm_up(runners, args.warmup)
        profile(runners[args.profile], args.steps, args.profile_shapes, args.profile_rows)
        return
    warm_up(runners, args.warmup)
    steps: dict[str, list[list[float]]] = defaultdict(list)  # per variant, per round: each step's seconds
    sustained: dict[tuple[int, int, int], list[float]] = defaultdict(list)  # per GEMM shape, per round
    best_single: dict[tuple[int, int, int], float] = defaultdict(float)  # per GEMM shape, over the run
    shapes = {key(g) for runner in runners.values() for g in runner.gemms()}
    foreign: list[float | None] = []  # per round: cores other processes kept busy
    for r in range(args.rounds):
        round_steps: dict[str, list[float]] = {}
        round_rates: dict[tuple[int, int, int], tuple[float, float]] = {}
        contention = Contention()
        for name, runner in runners.items():
            round_steps[name] = []
            for _ in range(args.steps):
                start = time.perf_counter()
                runner.step()
                round_steps[name].append(time.perf_counter() - start)
        for shape in shapes:
            round_rates[shape] = matmul_rates(*shape, seconds=0.3)
        foreign.append(contention.foreign_cores())
        quiet = foreign[-1] is None or foreign[-1] <= args.max_foreign_cpu
        print(f"round {r + 1}: " + ", ".join(f"{n} {statistics.median(t) * 1e3:.0f}ms" for n, t in round_steps.items())
              + ("" if foreign[-1] is None else f"; other processes {foreign[-1]:.2f} cores")
              + ("" if quiet else " (not counted)"), flush=True)
        if not quiet:
            continue
        for name, times in round_steps.items():
            steps[name].append(times)
        for shape, (rate, best) in round_rates.items():
            sustained[shape].append(rate)
            best_single[shape] = max(best_single[shape], best)
    if not steps:
        raise SystemExit(f"every round ran beside other processes using > {args.max_foreign_cpu} cores; rerun on a "
                         "quieter machine or raise --max-foreign-cpu")

    def paired(name: str, ref: str) -> float:
        """Median over rounds of (variant's median step / ref's median step) within the round."""
        return statistics.median(statistics.median(a) / statistics.median(b)
                                 for a, b in zip(steps[name], steps[ref], strict=True))

    tokens = base.optim.batch_size * base.data.seq_len
    print(f"\n{args.config}: {base.model.num_layers} x {base.model.hidden_size}, batch {base.optim.batch_size} x "
          f"{base.data.seq_len}, {args.threads} threads, {len(steps['mlm'])} of {args.rounds} rounds of {args.steps} "
          f"steps counted (other processes <= {args.max_foreign_cpu} cores), "
          f"{len(next(iter(runners.values())).batches)} distinct masked batches per variant")
    print("| variant | median step ms | best step ms | tokens/s | GFLOP/step | these batches / expected | "
          "model GFLOP/s | MFU | MFU vs best single matmul | step vs ref | ref | FLOPs vs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    typical = {shape: statistics.median(rates) for shape, rates in sustained.items()}
    for name, runner in runners.items():
        every = [t for round_steps in steps[name] for t in round_steps]
        median, best, flops = statistics.median(every), min(every), runner.flops()
        mfu = flops / median / gemm_rate(runner.gemms(), typical)
        mfu_strict = flops / median / gemm_rate(runner.gemms(), best_single)
        ref = reference(name)
        print(f"| {name} | {median * 1e3:.0f} | {best * 1e3:.0f} | {tokens / median:.0f} | {flops / 1e9:.1f} | "
              f"{runner.exact_flops / flops:.3f} | {flops / median / 1e9:.1f} | {mfu:.2f} | {mfu_strict:.2f} | "
              f"{paired(name, ref):.2f} | {ref} | {flops / runners[ref].flops():.2f} |")
    print()
    for name in runners:
        if name.startswith("hybrid") and not name.endswith("-compile"):
            print(f"{name} / mlm step time: {paired(name, 'mlm'):.2f} (FLOPs ratio "
                  f"{runners[name].flops() / runners['mlm'].flops():.2f})")
    if "hf-mlm" in runners:
        print(f"ours / HF tokens/s (mlm vs hf-mlm): {paired('hf-mlm', 'mlm'):.2f}")


if __name__ == "__main__":
    main()

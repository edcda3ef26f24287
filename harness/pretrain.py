"""Pre-training on Ray Train: the ONE training loop, and the CLI that prepares data and launches it.

    python -m harness.pretrain --config studies/configs/small.yaml [dotted.key=value ...]

Each worker streams its shard of the prepared token sequences, draws the batch's masks on the CPU
with a generator seeded by (seed, rank, epoch, step), and runs the objective from the registry. The
step has no host-device sync: metrics are summed on the device and read every `train.log_every`
steps, when they are reported to Ray (and from there to MLflow).

Randomness is a pure function of (seed, rank, epoch, step): masks from their own generator, dropout
from torch's generator reseeded every step. A checkpoint therefore needs no RNG state beyond the
step counters, and resuming reproduces the uninterrupted run (exactly so with one worker, whose
data order is fixed).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import UserCallback

from eval.quick import quick_probe
from harness import tracking
from harness.config import Config, config_from_dict, load_config, resolve_location, resolve_path
from harness.launch import build_trainer
from harness.perf import peak_flops, retain_freed_memory
from harness.prepare import load_tokenizer, prepare, read_prepared
from models import export_encoder, momentum_at
from objectives import PretrainModule, mask_plan
from objectives.flops import train_flops_per_step
from objectives.masking import MaskedBatch, SpecialTokens, mask_batch

STATE_FILE = "state.pt"
ENCODER_DIR = "encoder"
CHECKPOINT_FORMAT = 1
_NO_BAD_STEP = 2**62


@dataclass
class Progress:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    position: int = 0  # batches of `epoch` already consumed


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


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (seed, rank, epoch, step, ...)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(directory: Path, module: PretrainModule, optimizer, scheduler, progress: Progress,
                    cfg: Config, export: bool) -> None:
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "progress": dataclasses.asdict(progress),
                "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, directory / STATE_FILE)
    if export:
        export_encoder(module.nets.encoder, directory / ENCODER_DIR)


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint of this harness (no {STATE_FILE}); "
                                "pass a checkpoint_* directory from a run's Ray results")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this harness reads {CHECKPOINT_FORMAT}")
    return state


def check_compatible(saved: dict[str, Any], cfg: Config) -> None:
    """A checkpoint must come from the same model and objective (the parameter shapes depend on them)."""
    ours = cfg.to_dict()
    keys = [("model", k) for k in ours["model"]] + [("objective", "name"), ("objective", "weighting")]
    diffs = [f"{a}.{b}: checkpoint {saved[a].get(b)!r}, config {ours[a][b]!r}" for a, b in keys
             if saved.get(a, {}).get(b) != ours[a][b]]
    if diffs:
        raise ValueError("checkpoint comes from another config: " + "; ".join(diffs)
                         + ". Resume with the checkpoint's config, or start a new run.")


# ---------------------------------------------------------------- the training loop


class Meter:
    """Sums metrics on the device between log steps; reading them is the only sync of the loop."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}  # device tensors (loss terms, λ, grad norm)
        self.host_sums: dict[str, float] = {}  # host floats (the batch's mask statistics): no copy to the device
        self.counts: dict[str, int] = {}
        self.first_bad_step = torch.tensor(_NO_BAD_STEP, device=device)

    def add(self, metrics: dict[str, torch.Tensor | float], step: int, loss: torch.Tensor) -> None:
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                self.sums[key] = self.sums.get(key, 0) + value.detach().float()
            else:
                self.host_sums[key] = self.host_sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step = torch.where(bad, self.first_bad_step.clamp(max=step), self.first_bad_step)

    def read(self, prefix: str) -> dict[str, float]:
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] / self.counts[k] for k in keys]).tolist() if keys else []  # the sync
        means = dict(zip(keys, values, strict=True))
        means.update({k: v / self.counts[k] for k, v in self.host_sums.items()})
        self.sums, self.host_sums, self.counts = {}, {}, {}
        return {f"{prefix}{k}": v for k, v in sorted(means.items())}

    def diverged_at(self) -> int | None:
        """The first step whose loss was not finite, agreed across workers."""
        bad = self.first_bad_step.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        step = int(bad.item())
        return None if step == _NO_BAD_STEP else step


def to_masked_batch(raw: dict[str, torch.Tensor], cfg: Config, specials: SpecialTokens,
                    generator: torch.Generator) -> MaskedBatch:
    ids = raw["input_ids"].long()
    attention = raw["attention_mask"].long() if "attention_mask" in raw else torch.ones_like(ids)
    return mask_batch(ids, attention, mask_plan(cfg), cfg.masking, specials, generator)


def train_step(model: torch.nn.Module, module: PretrainModule, optimizer: torch.optim.Optimizer,
               batch: MaskedBatch, grad_clip: float, momentum: float, diagnostics: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """One optimisation step: the objective's forward (bf16 autocast on GPU), backward, gradient clipping,
    AdamW, EMA target update. `model` runs the forward (DDP and/or compiled); `module` is the bare
    PretrainModule under it. Returns the loss and the metrics with the gradient norm; nothing syncs."""
    device = batch.input_ids.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss, metrics = model(batch, diagnostics=diagnostics)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm, foreach=True)
    optimizer.step()
    module.nets.update_target(momentum)
    return loss, {**metrics, "grad_norm": grad_norm}


def held_out_batches(shard, cfg: Config, specials: SpecialTokens) -> list[MaskedBatch]:
    """The first `train.eval_batches` held-out batches, masked once with fixed seeds and kept in
    memory: every validation scores the same tokens and masks, and reads the data only once."""
    batches = []
    for i, raw in enumerate(shard.iter_torch_batches(batch_size=cfg.optim.batch_size, drop_last=True)):
        if i >= cfg.train.eval_batches:
            break
        generator = torch.Generator().manual_seed(derived_seed(cfg.seed, 1_000_003, i))
        batches.append(to_masked_batch(raw, cfg, specials, generator))
    if not batches:
        raise RuntimeError(f"the validation split has fewer than optim.batch_size={cfg.optim.batch_size} rows: "
                           "raise data.val_fraction or data.max_documents")
    return batches


@torch.no_grad()
def validate(module: PretrainModule, batches: list[MaskedBatch], device: torch.device) -> dict[str, float]:
    """MLM loss and accuracy and JEPA loss on the held-out documents."""
    module.eval()
    meter = Meter(device)
    for i, batch in enumerate(batches):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, metrics = module(batch.to(device), diagnostics=True)
        meter.add({k: v for k, v in metrics.items() if k.startswith(("loss", "mlm_acc"))}, i, loss)
    module.train()
    return meter.read("val/")


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    cfg = config_from_dict(loop["config"])
    specials = SpecialTokens(**loop["specials"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(worker_threads(cfg))
    if device.type == "cpu":
        retain_freed_memory()  # no page faults on every step's large tensors
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    module = PretrainModule(cfg).to(device)
    optimizer = build_optimizer(module, cfg)
    o = cfg.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, o.warmup_steps, o.max_steps, o.min_lr_ratio))
    progress = Progress()
    # After a worker failure Ray hands back this run's latest checkpoint; a new run may start from an
    # earlier run's checkpoint (train.resume_from; Train V2 dropped resume_from_checkpoint).
    restored = ray.train.get_checkpoint()
    if restored is None and cfg.train.resume_from:
        restored = ray.train.Checkpoint(cfg.train.resume_from)
    if restored is not None:
        with restored.as_directory() as directory:
            state = read_checkpoint(directory)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = Progress(**state["progress"])
    model = ray.train.torch.prepare_model(module)  # DDP (gloo on CPU, NCCL on GPU) when world > 1
    step_fn = torch.compile(model, dynamic=True) if cfg.train.compile else model

    train_shard = ray.train.get_dataset_shard("train")
    val_batches = None
    if rank == 0 and cfg.train.eval_every:
        val_batches = held_out_batches(ray.train.get_dataset_shard("val"), cfg, specials)
    tokens_per_step = o.batch_size * cfg.data.seq_len
    flops_per_step = train_flops_per_step(cfg)
    # On CPU the peak is measured at the first report, not here: while Ray starts the run the cores are busy
    # for seconds, and a peak measured then read ~half (logged MFU > 1).
    peak: tuple[float, str] | None = None  # (FLOP/s, where it came from)
    meter = Meter(device)
    fault_marker = Path(loop["fault_marker"]) if loop.get("fault_marker") else None
    quick_tasks = loop.get("quick_probe") if rank == 0 else None
    interval_start, data_time, interval_steps, train_time = time.perf_counter(), 0.0, 0, 0.0
    if restored is not None:
        print(f"[rank {rank}] resumed at step {progress.step} (epoch {progress.epoch}, batch {progress.position})")

    while progress.step < o.max_steps:
        batches = iter(train_shard.iter_torch_batches(
            batch_size=o.batch_size, drop_last=True, prefetch_batches=2,
            local_shuffle_buffer_size=8 * o.batch_size, local_shuffle_seed=derived_seed(cfg.seed, rank, progress.epoch),
            pin_memory=device.type == "cuda"))
        consumed = 0
        while progress.step < o.max_steps:
            fetch_start = time.perf_counter()
            raw = next(batches, None)
            if raw is None:
                break
            consumed += 1
            if consumed <= progress.position:  # resuming mid-epoch: skip what the checkpoint had consumed
                continue
            generator = torch.Generator().manual_seed(derived_seed(cfg.seed, rank, progress.epoch, progress.step))
            batch = to_masked_batch(raw, cfg, specials, generator)  # drawn on the CPU
            if device.type == "cuda":
                batch = batch.pin_memory()  # the masks are new tensors: pin them for an asynchronous copy
            batch = batch.to(device, non_blocking=True)
            data_time += time.perf_counter() - fetch_start

            if cfg.train.fail_at_step == progress.step and rank == world - 1 and not fault_marker.exists():
                fault_marker.touch()
                raise RuntimeError(f"injected fault at step {progress.step} (train.fail_at_step)")

            last = progress.step + 1 == o.max_steps
            log_now = (progress.step + 1) % cfg.train.log_every == 0 or last
            torch.manual_seed(derived_seed(cfg.seed, rank, progress.epoch, progress.step, 1))  # dropout
            momentum = momentum_at(progress.step, o.max_steps, cfg.objective.ema_start, cfg.objective.ema_end)
            loss, metrics = train_step(step_fn, module, optimizer, batch, o.grad_clip, momentum, log_now)
            scheduler.step()  # after the optimiser step: step 0 ran at warmup's first lr
            meter.add(metrics, progress.step, loss)
            progress.step += 1
            progress.position = consumed
            interval_steps += 1

            ckpt_now = last or (cfg.train.checkpoint_every and progress.step % cfg.train.checkpoint_every == 0)
            eval_now = val_batches is not None and (last or progress.step % cfg.train.eval_every == 0)
            if not (log_now or ckpt_now or eval_now):
                continue
            report = meter.read("train/")
            elapsed = time.perf_counter() - interval_start
            train_time += elapsed
            step_time = elapsed / max(interval_steps, 1)
            if peak is None:
                peak = peak_flops(cfg.train.peak_flops, device, ffn_gemm_shape(cfg))
            report.update({
                "step": progress.step, "epoch": progress.epoch, "train/lr": scheduler.get_last_lr()[0],
                "train/ema_momentum": momentum,
                "perf/tokens_per_s": world * tokens_per_step / step_time,
                "perf/model_flops_per_s": flops_per_step / step_time,  # per worker
                "perf/mfu": flops_per_step / step_time / peak[0],
                "perf/data_wait": data_time / max(elapsed, 1e-9),
                "perf/step_time_s": step_time,
                "perf/train_time_s": train_time,  # steps and data waits of this run so far (no eval, no I/O)
            })
            bad_step = meter.diverged_at()
            if bad_step is not None:
                report.update({"diverged": 1.0, "diverged_at_step": bad_step})
                ray.train.report(report)
                print(f"[rank {rank}] diverged at step {bad_step}: loss is not finite; stopping")
                return
            if eval_now:
                report.update(validate(module, val_batches, device))
                if quick_tasks:
                    report.update(quick_probe(module.nets.encoder, quick_tasks, device))
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if ckpt_now and rank == 0:
                    save_checkpoint(Path(tmp), module, optimizer, scheduler, progress, cfg, export=last)
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(report, checkpoint=checkpoint)
            if rank == 0 and log_now:
                print(f"step {progress.step}/{o.max_steps} loss {report.get('train/loss', float('nan')):.4f} "
                      f"λ {report.get('train/lambda', float('nan')):.3f} {report['perf/tokens_per_s']:.0f} tok/s "
                      f"mfu {report['perf/mfu']:.2f} ({peak[1]}) data_wait {report['perf/data_wait']:.3f}")
            interval_start, data_time, interval_steps = time.perf_counter(), 0.0, 0
        if progress.step >= o.max_steps:
            break
        if consumed == 0:
            raise RuntimeError(f"the train split gave no batch of {o.batch_size} rows to worker {rank}: prepare "
                               "more documents (data.max_documents) or lower optim.batch_size")
        progress.epoch += 1
        progress.position = 0


# ---------------------------------------------------------------- the driver


@dataclass(frozen=True)
class PreparedRun:
    """What every run (or trial) of one config shares: checked inputs and the prepared token shards."""

    cfg: Config  # with data.source and data.tokenizer resolved
    data_dir: Path
    tokenizer: Any  # the loaded tokenizer: its special ids for the masks, saved beside every exported encoder
    tracking_uri: str


def prepare_run(cfg: Config) -> PreparedRun:
    """Validate everything cheap first (tokenizer, vocabulary, tracking, resume checkpoint), then start
    Ray if needed and prepare the data (a no-op when the cache already holds it)."""
    output = resolve_path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    data_cfg = dataclasses.replace(cfg.data, source=resolve_location(cfg.data.source),
                                   tokenizer=resolve_location(cfg.data.tokenizer))
    tokenizer = load_tokenizer(data_cfg.tokenizer)
    if len(tokenizer) > cfg.model.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                         f"({len(tokenizer)} at {data_cfg.tokenizer}); set model.vocab_size={len(tokenizer)}")
    uri = cfg.tracking.uri or tracking.default_uri(output)
    tracking.check_reachable(uri)
    if cfg.train.resume_from:
        check_compatible(read_checkpoint(cfg.train.resume_from)["config"], cfg)
    if not ray.is_initialized():
        ray.init()  # inside `ray job submit`, RAY_ADDRESS points at the cluster
    data_dir = prepare(data_cfg, output / "data")
    return PreparedRun(dataclasses.replace(cfg, data=data_cfg), data_dir, tokenizer, uri)


def train(cfg: Config, prepared: PreparedRun, run: tracking.RunHandle, name: str, run_dir: Path, storage: Path,
          callbacks: Sequence[UserCallback] = (), quick_tasks: list | None = None) -> dict[str, Any]:
    """Train one run on Ray (logging to the open MLflow `run`), export its encoder to run_dir/encoder.

    `cfg` may differ from prepared.cfg in anything but the data section (a study's trial). A Train run
    whose `name` already has checkpoints under `storage` resumes from the latest one (Train V2).
    `quick_tasks` (eval.quick.build_quick_probe): run the quick probe on rank 0 at every eval step."""
    if cfg.data != prepared.cfg.data:
        raise ValueError("the data section of a trial must equal the prepared one; prepare the data per config")
    ray.data.DataContext.get_current().enable_progress_bars = False  # datasets copy it: quiet worker logs
    run_dir.mkdir(parents=True, exist_ok=True)
    loop_config = {
        "config": cfg.to_dict(),
        "specials": dataclasses.asdict(SpecialTokens.from_tokenizer(prepared.tokenizer)),
        "fault_marker": str(run_dir / "fault_injected") if cfg.train.fail_at_step is not None else None,
        "quick_probe": quick_tasks,
    }
    uri = prepared.tracking_uri
    trainer = build_trainer(cfg, train_loop_per_worker, loop_config, read_prepared(prepared.data_dir), name,
                            storage, [tracking.ReportToMLflow(uri, run.run_id), *callbacks])
    result = trainer.fit()
    # Every report reached MLflow through the callback; Ray's result only keeps the metrics that
    # came with a checkpoint, and a diverged run ends without one.
    metrics = tracking.read_run(uri, run.run_id)["metrics"]
    summary: dict[str, Any] = {"run": name, "mlflow_run_id": run.run_id, "tracking_uri": uri,
                               "steps": int(metrics.get("step", 0))}
    if metrics.get("diverged"):
        note = f"diverged at step {int(metrics['diverged_at_step'])}: the loss became NaN/inf"
        run.set_outcome("diverged", note)
        return {**summary, "outcome": "diverged", "note": note}
    encoder = run_dir / ENCODER_DIR  # HF format with its tokenizer: what eval.run reads
    with result.checkpoint.as_directory() as checkpoint_dir:
        shutil.copytree(Path(checkpoint_dir) / ENCODER_DIR, encoder, dirs_exist_ok=True)
    prepared.tokenizer.save_pretrained(encoder)
    tracking.log_artifact(encoder, ENCODER_DIR)
    run.set_outcome("finished", f"{metrics.get('step')} steps")
    keys = ("train/loss", "train/loss_mlm", "train/loss_jepa", "train/lambda", "val/loss_mlm",
            "val/mlm_acc", "val/loss_jepa", "perf/tokens_per_s", "perf/mfu", "perf/data_wait")
    return {**summary, "outcome": "finished", **{k: round(metrics[k], 4) for k in keys if k in metrics},
            "checkpoint": result.checkpoint.path, "encoder": str(encoder)}


def run_pretraining(cfg: Config, run_name: str | None = None) -> dict[str, Any]:
    """One pre-training run: prepare, train on Ray under its own MLflow run, export, summarise."""
    prepared = prepare_run(cfg)
    cfg = prepared.cfg
    output = resolve_path(cfg.output_dir)
    run_name = run_name or f"{cfg.objective.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracking.training_run(prepared.tracking_uri, cfg.tracking.experiment, run_name, cfg.to_dict()) as run:
        return train(cfg, prepared, run, run_name, output / "runs" / run_name, output / "ray_results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config, e.g. studies/configs/small.yaml")
    parser.add_argument("--name", default=None, help="run name (default: <objective>-<time>)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 train.num_workers=2")
    args = parser.parse_args(argv)
    summary = run_pretraining(load_config(args.config, args.overrides), run_name=args.name)
    print("\n".join(f"{k:>22}: {v}" for k, v in summary.items()))
    return 0 if summary["outcome"] == "finished" else 1


if __name__ == "__main__":
    # Run through the importable module: Ray pickles `harness.pretrain.train_loop_per_worker` by
    # reference then, not this __main__'s copy by value (which drags torch along and fails).
    from harness.pretrain import main as _main

    raise SystemExit(_main())

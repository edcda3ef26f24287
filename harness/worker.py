"""The ONE training loop, run by every Ray Train worker, or with train.in_process by the calling process as the one
worker (`train_loop`, from harness.worker_entry), and its parts; its checkpoints are written and read through
harness.checkpoint.

Each worker streams its shard of MASKED batches (Ray Data draws the masks: harness.stream), moves each to its
device once, and runs the objective from the registry. The step has no host-device sync: metrics are summed on
the device and read every `train.log_every` steps, when they are reported to Ray (and from there to MLflow).

The loop reads as its parts: set_up (build or restore), the stream, train_step, the IntervalTimer, validate and
the quick probe, report_and_checkpoint. Randomness is a pure function of the seed and the data: masks of
(seed, epoch, batch identity), dropout from torch's generator reseeded by (seed, rank, epoch, step). A
checkpoint therefore needs no RNG state beyond the step and stream counters, and resuming reproduces the
uninterrupted run (exactly so with one worker, whose data order is fixed).

A module of its own because every worker process imports it before its first step (harness.worker_entry does, once
the worker's stream has started): it imports what the loop runs (torch, Ray Train, the objectives, the quick probe),
not the driver's MLflow, Tune, data preparation or scikit-learn.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import ray.train.torch
import torch
import torch._dynamo
import torch.distributed as dist

from eval.quick import quick_probe
from harness.checkpoint import Progress, read_checkpoint, save_checkpoint, write_run_checkpoint
from harness.config import Config, config_from_dict
from harness.console import own_logging, progress_line, quiet_libraries
from harness.perf import peak_flops
from harness.step import (
    build_optimizer,
    compile_enabled,
    compile_forward,
    ffn_gemm_shape,
    lr_multiplier,
    train_step,
    worker_threads,
)
from harness.stream import MaskingStage, derived_seed, held_out, to_device
from models import momentum_at
from objectives import PretrainModule, train_flops_per_step
from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from harness.train_callbacks import InProcessRun  # unpickled from the loop's config; its module imports Tune

logger = logging.getLogger(__name__)

_NO_BAD_STEP = 2**62


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


class IntervalTimer:
    """Wall time, time blocked on the next batch, and this process's CPU time, between two reports."""

    def __init__(self) -> None:
        self.train_time = 0.0  # steps and data waits of this run so far (no eval, no I/O)
        self.first_batch: float | None = None  # the wait for the stream's first batch (the pipeline's start)
        self.restart()

    def restart(self) -> None:
        self.start, self.cpu_start, self.data_time, self.steps = time.perf_counter(), time.process_time(), 0.0, 0
        self.end: float | None = None

    def stop(self) -> None:
        """End the interval here: what runs before `read` (the peak's measurement) is not step time."""
        self.end, self.cpu_end = time.perf_counter(), time.process_time()

    def timed(self, batches: Iterator[tuple[MaskedBatch, int]]) -> Iterator[tuple[MaskedBatch, int]]:
        while True:
            fetch_start = time.perf_counter()
            item = next(batches, None)
            waited = time.perf_counter() - fetch_start
            self.data_time += waited
            if self.first_batch is None:
                self.first_batch = waited
            if item is None:
                return
            yield item
            self.steps += 1

    def read(self, world: int, tokens_per_step: int, flops_per_step: float, peak: float) -> dict[str, float]:
        if self.end is None:
            self.stop()
        elapsed = self.end - self.start
        self.train_time += elapsed
        step_time = elapsed / max(self.steps, 1)
        return {
            "perf/tokens_per_s": world * tokens_per_step / step_time,
            "perf/model_flops_per_s": flops_per_step / step_time,  # per worker
            "perf/mfu": flops_per_step / step_time / peak,
            "perf/data_wait": self.data_time / max(elapsed, 1e-9),
            "perf/step_time_s": step_time,
            "perf/process_cpu_s_per_step": (self.cpu_end - self.cpu_start) / max(self.steps, 1),
            "perf/train_time_s": self.train_time,
            "perf/first_batch_s": self.first_batch or 0.0,  # part of train_time_s
        }


def held_out_batches(prepared_dir: str, stage: MaskingStage, cfg: Config, device: torch.device) -> list[MaskedBatch]:
    """The first `train.eval_batches` held-out batches (masked once, with fixed seeds, as the stream masks), kept
    on the device: every validation scores the same tokens and masks, and reads the data only once."""
    batches = [to_device(batch, device) for batch in held_out(prepared_dir, stage, cfg.train.eval_batches)]
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
            loss, metrics = module(batch, diagnostics=True)
        meter.add({k: v for k, v in metrics.items() if k.startswith(("loss", "mlm_acc"))}, i, loss)
    module.train()
    return meter.read("val/")


@dataclass
class Worker:
    """One Train worker's state: what set_up builds (or restores from a checkpoint) and the loop steps."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    module: PretrainModule  # the bare module: checkpoints, EMA, evaluation
    model: torch.nn.Module  # what the step calls: the module under DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    progress: Progress


def set_up(cfg: Config, device: torch.device, in_process: bool) -> Worker:
    """Build the module, optimiser and schedule on this worker's device; restore them from a checkpoint when Ray
    hands one back (after a worker failure) or train.resume_from names one (in process, the run's last checkpoint
    arrives there: harness.pretrain.train)."""
    torch.set_num_threads(worker_threads(cfg))
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
    context = None if in_process else ray.train.get_context()
    rank, world = (0, 1) if context is None else (context.get_world_rank(), context.get_world_size())
    # Train V2 dropped resume_from_checkpoint: the loop loads it
    restored = None if in_process else ray.train.get_checkpoint()
    if restored is None and cfg.train.resume_from:
        restored = ray.train.Checkpoint(cfg.train.resume_from)
    if restored is not None:
        with restored.as_directory() as directory:
            state = read_checkpoint(directory)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = Progress(**state["progress"])
        logger.info("rank %d resumed at step %d (epoch %d, stream batch %d)", rank, progress.step, progress.epoch,
                    progress.position)
    # DDP (gloo on CPU, NCCL on GPU) when world > 1; in process, one worker on its device already
    model = module if in_process else ray.train.torch.prepare_model(module)
    if compile_enabled(cfg, device):
        if in_process:  # a study's trial process serves the next trial: not on the guards of the last one's graphs
            torch._dynamo.reset()
        model = compile_forward(model)
    return Worker(cfg, rank, world, device, module, model, optimizer, scheduler, progress)


def report_and_checkpoint(w: Worker, report: dict[str, float], save: bool, export: bool,
                          in_process: InProcessRun | None = None) -> None:
    """ray.train.report from every rank; rank 0 attaches the checkpoint when one is due.

    The checkpoint is written to a local staging directory, which Ray deletes once it has uploaded it to the run's
    storage. With train.async_checkpoint the upload runs in Ray's background thread while training goes on
    (reports stay in order: a later report waits for an earlier upload); the last checkpoint, which the driver
    reads as the run's result, is always uploaded before report returns.
    In process (train.in_process), without Ray Train, the checkpoint is written to the run's storage directly, and
    the report goes from here to MLflow before it and to Tune after it (harness.train_callbacks.InProcessRun)."""
    def write(directory: Path) -> None:
        save_checkpoint(directory, w.module, w.optimizer, w.scheduler, w.progress, w.cfg, export=export)

    if in_process is not None:  # one worker: rank 0
        in_process.log(report)
        if save:
            write_run_checkpoint(Path(in_process.storage), w.progress.step, w.cfg.train.keep_checkpoints, write)
        in_process.forward_to_tune(report)
        return
    checkpoint = None
    if save and w.rank == 0:
        staging = Path(tempfile.mkdtemp(prefix=f"pnr-checkpoint-{w.progress.step}-"))
        write(staging)
        checkpoint = ray.train.Checkpoint.from_directory(staging)
    background = w.cfg.train.checkpoint_async and not export
    ray.train.report(report, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True,
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC if background
                     else ray.train.CheckpointUploadMode.SYNC)


def train_loop(loop: dict[str, Any], batches: Iterator[tuple[MaskedBatch, int]], device: torch.device,
               entered: float, worker_start_s: float) -> None:
    """The loop of harness.worker_entry, which started `batches` (this worker's stream) on `device` at `entered`
    (perf_counter), worker_start_s after the driver's fit()."""
    # Where a run's time goes besides its steps (seconds, summed over the run so far; BENCHMARKS.md "Tune overhead").
    phases = {"perf/worker_start_s": worker_start_s, "perf/peak_s": 0.0, "perf/validate_s": 0.0, "perf/report_s": 0.0}
    own_logging()  # a worker process: its progress lines reach the driver's console
    quiet_libraries()
    cfg = config_from_dict(loop["config"])
    in_process: InProcessRun | None = loop.get("in_process")
    # Ray Data's start-up runs in its processes while this one builds the model and reads the held-out batches.
    w = set_up(cfg, device, in_process is not None)
    o, t = cfg.optim, cfg.train
    val_batches = None
    if w.rank == 0 and t.eval_every:
        val_batches = held_out_batches(*loop["held_out"], cfg, w.device)
    quick_tasks = loop.get("quick_probe") if w.rank == 0 else None
    step_hook: Callable[[int, int, int], None] | None = loop.get("step_hook")  # tests inject faults here
    tokens_per_step, flops_per_step = o.batch_size * cfg.data.seq_len, train_flops_per_step(cfg)
    # On CPU the peak is measured at the first report, not here: while Ray starts the run the cores are busy
    # for seconds, and a peak measured then read ~half (logged MFU > 1).
    peak: tuple[float, str] | None = None  # (FLOP/s, where it came from)
    meter, timer = Meter(w.device), IntervalTimer()
    # Resuming: skip the stream's batches that the checkpoint had consumed (one worker: the same batches).
    stream = itertools.islice(batches, w.progress.position, None)

    looping, first_step = time.perf_counter(), w.progress.step  # for the progress line's elapsed time and ETA
    phases["perf/worker_setup_s"] = looping - entered  # build or restore, the held-out batches (the stream starting)
    for batch, epoch in timer.timed(stream):
        p = w.progress
        if step_hook is not None:
            step_hook(p.step, w.rank, w.world)
        last = p.step + 1 == o.max_steps
        log_now = (p.step + 1) % t.log_every == 0 or last
        torch.manual_seed(derived_seed(cfg.seed, w.rank, epoch, p.step, 1))  # dropout
        momentum = momentum_at(p.step, o.max_steps, cfg.objective.ema_start, cfg.objective.ema_end)
        loss, metrics = train_step(w.model, w.module, w.optimizer, batch, o.grad_clip, momentum, log_now)
        w.scheduler.step()  # after the optimiser step: step 0 ran at warmup's first lr
        meter.add(metrics, p.step, loss)
        p.step, p.epoch, p.position = p.step + 1, epoch, p.position + 1

        ckpt_now = last or (t.checkpoint_every and p.step % t.checkpoint_every == 0)
        eval_now = val_batches is not None and (last or p.step % t.eval_every == 0)
        if not (log_now or ckpt_now or eval_now):
            continue
        timer.stop()
        if peak is None:
            measured = time.perf_counter()
            peak = peak_flops(t.peak_flops, w.device, ffn_gemm_shape(cfg))
            phases["perf/peak_s"] = time.perf_counter() - measured
            if w.rank == 0:
                logger.info("[%s] MFU = model FLOP/s / %.1f GFLOP/s (%s)", loop["name"], peak[0] / 1e9, peak[1])
        report = {**meter.read("train/"), **timer.read(w.world, tokens_per_step, flops_per_step, peak[0]),
                  "step": p.step, "epoch": p.epoch, "train/lr": w.scheduler.get_last_lr()[0],
                  "train/ema_momentum": momentum, **phases}
        bad_step = meter.diverged_at()
        if bad_step is not None:
            report_and_checkpoint(w, {**report, "diverged": 1.0, "diverged_at_step": bad_step}, False, False,
                                  in_process)
            logger.error("rank %d: diverged at step %d: the loss is not finite; stopping", w.rank, bad_step)
            return
        if eval_now:
            validated = time.perf_counter()
            report.update(validate(w.module, val_batches, w.device))
            if quick_tasks:
                report.update(quick_probe(w.module.nets.encoder, quick_tasks, w.device))
            phases["perf/validate_s"] += time.perf_counter() - validated
            report["perf/validate_s"] = phases["perf/validate_s"]
        reported = time.perf_counter()
        report_and_checkpoint(w, report, save=bool(ckpt_now), export=last, in_process=in_process)
        phases["perf/report_s"] += time.perf_counter() - reported
        if w.rank == 0 and log_now:
            logger.info("[%s] %s", loop["name"], progress_line(p.step, o.max_steps, time.perf_counter() - looping,
                                                              p.step - first_step, report))
        if last:
            return
        timer.restart()
    raise RuntimeError(f"worker {w.rank}'s stream ended at step {w.progress.step} of {o.max_steps}: prepare more "
                       "documents (data.max_documents) or lower optim.batch_size")


class FailOnceAt:
    """A step hook for tests: the last worker raises once at `step` (a marker file makes it once per run)."""

    def __init__(self, step: int, marker: str | Path):
        self.step, self.marker = step, Path(marker)

    def __call__(self, step: int, rank: int, world: int) -> None:
        if step == self.step and rank == world - 1 and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"injected fault at step {step}")

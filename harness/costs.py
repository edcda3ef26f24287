"""What checkpointing and evaluation cost a run, as shares of its wall time: a start-up estimate, not a measurement.

    estimate = estimate_costs(cfg, step_s=0.098, write_bytes_per_s=200e6)
    estimate.checkpoint_fraction, estimate.eval_fraction, estimate.warning

A checkpoint holds, at fp32, the trained parameters, the EMA target encoder and AdamW's two moments per trained
parameter (harness.checkpoint.save_checkpoint writes the module's state dict and the optimiser's); it is written by
rank 0 while every rank waits at the report, so its write time is lost by all workers. A validation pass is
`train.eval_batches` forward passes on rank 0, also waited for by every rank. Both are amortised over their
intervals (`train.checkpoint_every`, `train.eval_every`) and compared with the step time.

Every default below is an assumption, named as such; pass measured values where you have them (the step time from
a run's perf/step_time_s, the write rate from a timed copy to the run's storage).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from harness.config import Config
from harness.perf import GPU_PEAK_FLOPS
from objectives import PretrainModule, train_flops_per_step

logger = logging.getLogger(__name__)

FP32_BYTES = 4
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, one each per trained parameter, fp32
WARN_ABOVE = 0.05  # checkpoint + evaluation share of wall time above which a run is warned

# Assumed, not measured here: one sequential stream writing to shared storage (NFS/EFS). Measure the real rate,
# e.g. `dd if=/dev/zero of=/mnt/pnr/ddtest bs=16M count=128 conv=fsync`, and pass it.
ASSUMED_WRITE_BYTES_PER_S = 200e6
# A validation batch is a forward pass (online networks and, for JEPA objectives, the EMA target) with the
# collapse diagnostics; a training step is forward + backward (backward ~2x forward) plus the target's forward.
# By FLOPs a forward-only batch is 1/3 (MLM) to 1/2 (target as large as the online pass) of a step: the upper end.
ASSUMED_EVAL_BATCH_COST = 0.5
# Model FLOPs utilisation of the step when no step time is given: 0.27 measured for base.yaml's eager bf16 step on
# an H200 (BENCHMARKS.md); ~0.6 measured for small models' fp32 steps on the 2-core development CPU.
ASSUMED_GPU_MFU = 0.27
ASSUMED_CPU_MFU = 0.6
ASSUMED_GPU_PEAK_FLOPS = GPU_PEAK_FLOPS["H100"]  # the cluster's p5 nodes; bf16 dense
ASSUMED_CPU_PEAK_FLOPS = 130e9  # the low end of the fp32 matmul peak measured on the 2-core development CPU


@dataclass(frozen=True)
class CostEstimate:
    """Seconds per event and shares of wall time; `warning` is set when checkpoint + evaluation exceed the limit."""

    step_s: float
    checkpoint_bytes: int
    checkpoint_s: float  # one checkpoint
    eval_s: float  # one validation pass (plus the quick probe, if given)
    checkpoint_fraction: float  # of the run's wall time: steps + checkpoints + validation passes
    eval_fraction: float
    warning: str | None

    @property
    def overhead_fraction(self) -> float:
        return self.checkpoint_fraction + self.eval_fraction


def _shapes(cfg: Config) -> PretrainModule:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return PretrainModule(cfg)


def checkpoint_bytes(cfg: Config) -> int:
    """fp32 bytes of a checkpoint's tensors: every parameter once (tied weights once, as torch.save stores shared
    storage once; the EMA target included) plus AdamW's two moments per trained parameter, plus buffers."""
    module = _shapes(cfg)
    params = list(module.parameters())  # deduplicates tied parameters
    trained = sum(p.numel() for p in params if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in params)
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return weights + ADAM_MOMENTS * FP32_BYTES * trained + buffers


def gradient_bytes(cfg: Config) -> int:
    """Bytes DDP all-reduces per step: one fp32 gradient per trained parameter (the EMA target has none)."""
    return sum(p.numel() * FP32_BYTES for p in _shapes(cfg).parameters() if p.requires_grad)


def ring_allreduce_bytes(nbytes: float, world: int) -> float:
    """Bytes each of `world` ranks sends (and receives) in a ring all-reduce of `nbytes`: 2 (n - 1) / n x nbytes
    (a reduce-scatter and an all-gather, each n - 1 chunks of nbytes / n). nccl-tests' bus bandwidth is this over
    the time."""
    if world < 1:
        raise ValueError(f"world={world}: must be >= 1")
    return 2 * (world - 1) / world * nbytes


def expected_step_s(cfg: Config, peak_flops: float | None = None, mfu: float | None = None) -> float:
    """Seconds of one training step from the model FLOPs of the config, at an assumed peak and MFU (see above)."""
    gpu = cfg.train.use_gpu
    peak = peak_flops or cfg.train.peak_flops or (ASSUMED_GPU_PEAK_FLOPS if gpu else ASSUMED_CPU_PEAK_FLOPS)
    return train_flops_per_step(cfg) / (peak * (mfu or (ASSUMED_GPU_MFU if gpu else ASSUMED_CPU_MFU)))


def _round_up(steps: float) -> int:
    """A readable interval: `steps` rounded up to one significant digit and a half (e.g. 1234 -> 1500)."""
    if steps <= 1:
        return 1
    scale = 10 ** math.floor(math.log10(steps))
    return int(math.ceil(steps / scale * 2) / 2 * scale)


def occurrences(steps: int, every: int, always_last: bool) -> int:
    """How often an event every `every` steps (0: never) happens in a run of `steps`, plus the last step's."""
    regular = steps // every if every else 0
    return regular + (1 if always_last and (not every or steps % every) else 0)


def estimate_costs(cfg: Config, *, step_s: float | None = None,
                   write_bytes_per_s: float = ASSUMED_WRITE_BYTES_PER_S,
                   eval_batch_cost: float = ASSUMED_EVAL_BATCH_COST, probe_s: float = 0.0,
                   limit: float = WARN_ABOVE) -> CostEstimate:
    """Checkpoint and evaluation shares of a run's wall time, and a warning naming the intervals that would bring
    them under `limit`. `step_s`: seconds per training step (default: expected_step_s); `write_bytes_per_s`: the
    storage write rate of output_dir; `eval_batch_cost`: a validation batch in training steps; `probe_s`: the quick
    probe that studies run at every evaluation, in seconds."""
    if step_s is None:
        step_s = expected_step_s(cfg)
    if step_s <= 0 or write_bytes_per_s <= 0 or eval_batch_cost < 0 or probe_s < 0 or limit <= 0:
        raise ValueError("step_s, write_bytes_per_s and limit must be > 0; eval_batch_cost and probe_s >= 0")
    t, steps = cfg.train, cfg.optim.max_steps
    size = checkpoint_bytes(cfg)
    ckpt_s = size / write_bytes_per_s
    eval_s = t.eval_batches * eval_batch_cost * step_s + probe_s
    # Over the whole run, as the loop does them: every `interval` steps and at the last step (the final checkpoint
    # even with checkpoint_every=0; no evaluation with eval_every=0).
    n_ckpt = occurrences(steps, t.checkpoint_every, always_last=True)
    n_eval = occurrences(steps, t.eval_every, always_last=bool(t.eval_every))
    ckpt_total, eval_total = n_ckpt * ckpt_s, n_eval * eval_s
    wall = steps * step_s + ckpt_total + eval_total
    ckpt_frac, eval_frac = ckpt_total / wall, eval_total / wall

    warning = None
    if ckpt_frac + eval_frac > limit:
        # Each part whose time exceeds half the limit of the steps' time gets the interval at which it would not:
        # with every suggestion applied the total stays under the limit.
        fixes = []
        if ckpt_total > limit / 2 * steps * step_s:
            every = _round_up(ckpt_s / (step_s * limit / 2))
            fixes.append(f"train.checkpoint_every={every}" if every < steps else
                         f"a longer run: the final checkpoint alone is {ckpt_s / wall:.0%} of {steps} steps")
        if eval_total > limit / 2 * steps * step_s:
            every = _round_up(eval_s / (step_s * limit / 2))
            fixes.append(f"train.eval_every={every}" if every < steps else "train.eval_every=0 (no validation)")
        warning = (
            f"checkpointing and evaluation are estimated at {ckpt_frac + eval_frac:.0%} of wall time, above "
            f"{limit:.0%} (checkpoints {ckpt_frac:.1%}: {n_ckpt} x {ckpt_s:.1f} s, {size / 1e9:.2f} GB each at "
            f"{write_bytes_per_s / 1e6:.0f} MB/s; validation {eval_frac:.1%}: {n_eval} x {eval_s:.2f} s; {steps} steps "
            f"of {step_s * 1e3:.0f} ms). Consider {' and '.join(fixes)}."
        )
    return CostEstimate(step_s, size, ckpt_s, eval_s, ckpt_frac, eval_frac, warning)


def warn_if_costly(cfg: Config, **kwargs: float) -> CostEstimate:
    """estimate_costs, with its warning (if any) logged: the start-up check of a run."""
    estimate = estimate_costs(cfg, **kwargs)
    if estimate.warning:
        logger.warning(estimate.warning)
    return estimate

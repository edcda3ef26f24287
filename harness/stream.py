"""The masked stream: Ray Data draws every batch's masks; the training process only moves tensors and steps.

    prepared token rows -> map_batches(mask_rows): a seeded local shuffle, cut into training batches, every
    mask drawn (objectives.masking.mask_batch) -> ONE output row per training batch, fixed-shape columns
    (index columns padded, their lengths beside them) -> streaming_split to the Train workers ->
    device_batches: the one CPU -> device boundary (unpack on the CPU, pin on CUDA, one non-blocking copy).

Masks are a pure function of (seed, epoch, batch identity), the identity being a hash of the batch's token ids,
and the JEPA block scales are still drawn once per batch. The train stream is the prepared split once per epoch,
concatenated in order (`union`, order preserved by the trainer's dataset config), and each row carries its epoch:
with one worker the stream's order is fixed, so a resumed run that skips the batches its checkpoint consumed
sees exactly the batches and masks of the uninterrupted run.
"""

from __future__ import annotations

import math
import pickle
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from harness.pickled_call import pickled_call
from objectives.masking import MaskedBatch, MaskPlan, SpecialTokens, mask_batch

if TYPE_CHECKING:
    import ray.data

    from objectives.config import MaskingConfig

STAT_PREFIX = "stat_"  # a column per mask statistic (objectives.masking's batch.stats)
VAL_EPOCH = -1  # the held-out batches' masks: fixed, as if drawn in an epoch of their own
SHUFFLE_BATCHES = 8  # the local shuffle mixes the rows of this many consecutive batches
Item = TypeVar("Item")
_END = object()


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (seed, epoch, batch identity, ...)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


def content_key(ids: np.ndarray) -> int:
    """A batch's identity: a hash of its token ids (independent of where or when it is masked)."""
    return zlib.crc32(np.ascontiguousarray(ids, dtype=np.int64).tobytes())


@dataclass(frozen=True)
class MaskingStage:
    """What the masking stage needs; pickled to Ray Data's map tasks."""

    masking: MaskingConfig
    plan: MaskPlan
    specials: SpecialTokens
    batch_size: int
    seed: int


def _pad(x: Tensor, length: int) -> np.ndarray:
    """x padded with zeros along its last dimension to `length` (the length travels in its own column)."""
    out = np.zeros((*x.shape[:-1], length), dtype=np.int64)
    out[..., : x.shape[-1]] = x.numpy()
    return out


def pack(batch: MaskedBatch, epoch: int) -> dict[str, Any]:
    """One masked batch -> one row of fixed-shape columns."""
    rows, length = batch.input_ids.shape
    row: dict[str, Any] = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy(),
                           "epoch": epoch}
    if batch.mlm_positions is not None:
        row.update(mlm_input_ids=batch.mlm_input_ids.numpy(), mlm_count=batch.mlm_positions.numel(),
                   mlm_positions=_pad(batch.mlm_positions, rows * length),
                   mlm_labels=_pad(batch.mlm_labels, rows * length))
    if batch.ctx_idx is not None:
        row.update(ctx_idx=_pad(batch.ctx_idx, length), ctx_len=batch.ctx_idx.shape[-1],
                   tgt_idx=_pad(batch.tgt_idx, length), tgt_len=batch.tgt_idx.shape[-1])
    row.update({STAT_PREFIX + k: float(v) for k, v in batch.stats.items()})
    return row


def unpack(row: dict[str, Tensor]) -> tuple[MaskedBatch, int]:
    """One row (as Ray Data's iter_torch_batches(batch_size=1) gives it) -> (the masked batch, its epoch)."""
    r = {k: v[0] for k, v in row.items()}
    batch = MaskedBatch(input_ids=r["input_ids"], attention_mask=r["attention_mask"],
                        stats={k.removeprefix(STAT_PREFIX): float(v) for k, v in r.items()
                               if k.startswith(STAT_PREFIX)})
    if "mlm_count" in r:
        count = int(r["mlm_count"])
        batch.mlm_input_ids = r["mlm_input_ids"]
        batch.mlm_positions, batch.mlm_labels = r["mlm_positions"][:count], r["mlm_labels"][:count]
    if "ctx_len" in r:
        batch.ctx_idx = r["ctx_idx"][:, : int(r["ctx_len"])].contiguous()
        batch.tgt_idx = r["tgt_idx"][..., : int(r["tgt_len"])].contiguous()
    return batch, int(r["epoch"])


def mask_rows(rows: dict[str, np.ndarray], stage: MaskingStage, epoch: int) -> dict[str, np.ndarray]:
    """Ray Data's map function: a chunk of token rows -> one masked row per full training batch (a chunk's tail
    of fewer than batch_size rows is dropped, as drop_last would)."""
    ids = rows["input_ids"]
    ids = np.stack(list(ids)) if ids.dtype == object else ids  # a list column arrives as an array of arrays
    ids = ids.astype(np.int64)
    order = np.random.default_rng(derived_seed(stage.seed, epoch, content_key(ids))).permutation(len(ids))
    ids = ids[order]
    packed = []
    for start in range(0, len(ids) - stage.batch_size + 1, stage.batch_size):
        part = ids[start: start + stage.batch_size]
        generator = torch.Generator().manual_seed(derived_seed(stage.seed, epoch, content_key(part)))
        tokens = torch.from_numpy(part)
        packed.append(pack(mask_batch(tokens, torch.ones_like(tokens), stage.plan, stage.masking, stage.specials,
                                      generator), epoch))
    if not packed:
        return {}
    return {key: np.stack([np.asarray(p[key]) for p in packed]) for key in packed[0]}


def epochs_needed(max_steps: int, batch_size: int, workers: int, train_sequences: int) -> int:
    """The fewest epochs of the train split that surely hold `max_steps` batches for every worker.

    Batching loses rows: Ray Data hands `mask_rows` chunks of SHUFFLE_BATCHES batches (fewer only at the end of a
    task's input), and each call drops its tail of less than a batch; so an epoch yields at least its rows less
    1/SHUFFLE_BATCHES and a batch. The streaming split gives every worker as many batches, dropping fewer than one per
    worker. Every epoch is a read of its own that Ray Data starts at once: no more epochs than that."""
    needed = (max_steps + 1) * batch_size * workers
    per_epoch = train_sequences * (1 - 1 / SHUFFLE_BATCHES) - batch_size
    if per_epoch <= 0:  # a split of about a batch: no bound holds; the loop says so if its stream ends early
        return math.ceil(needed / max(train_sequences, 1)) + 1
    return math.ceil(needed / per_epoch)


def masked_datasets(prepared: dict[str, ray.data.Dataset], stage: MaskingStage, epochs: int,
                    batches: int | None = None) -> dict[str, ray.data.Dataset]:
    """{"train": `epochs` passes over the train split, masked}; with `batches`, only the stream's first `batches`
    batches (a run's steps x workers): Ray Data stops reading and masking once they are made, instead of running
    ahead into epochs no step will see (and polling, backpressured, until the run ends). The held-out batches do
    not stream: `held_out`.

    The plan holds `mask_rows` and the stage pickled to bytes (harness.pickled_call): the processes that only hold
    the plan import neither torch nor the objectives."""
    chunk, call = stage.batch_size * SHUFFLE_BATCHES, pickle.dumps((mask_rows, (stage,)))
    train = [prepared["train"].map_batches(pickled_call, batch_size=chunk, batch_format="numpy",
                                           fn_kwargs={"call": call, "epoch": epoch}) for epoch in range(epochs)]
    stream = train[0].union(*train[1:]) if len(train) > 1 else train[0]
    return {"train": stream if batches is None else stream.limit(batches)}


def held_out(prepared_dir: str | Path, stage: MaskingStage, batches: int) -> list[MaskedBatch]:
    """The first `batches` batches of the held-out split (its files in name order), masked by `mask_rows` as if
    drawn in an epoch of their own (VAL_EPOCH): the same tokens and masks whenever and wherever they are read.

    Read with pyarrow in the calling process: a few batches do not need a Ray Data pipeline, whose start-up
    (an executor, file listing, a read and a map task) took seconds of every run's start."""
    import pyarrow.parquet as pq

    chunk = stage.batch_size * SHUFFLE_BATCHES
    needed = math.ceil(batches / SHUFFLE_BATCHES) * chunk
    parts, count = [], 0
    for path in sorted((Path(prepared_dir) / "val").glob("*.parquet")):
        if count >= needed:
            break
        column = pq.read_table(path, columns=["input_ids"]).column("input_ids").to_numpy(zero_copy_only=False)
        parts.append(column)
        count += len(column)
    ids = np.concatenate(parts)[:needed] if parts else np.empty(0, dtype=object)
    out: list[MaskedBatch] = []
    for start in range(0, len(ids), chunk):
        rows = mask_rows({"input_ids": ids[start: start + chunk]}, stage, VAL_EPOCH)
        for i in range(len(rows.get("epoch", []))):
            out.append(unpack({k: torch.from_numpy(np.asarray(v[i: i + 1])) for k, v in rows.items()})[0])
    return out[:batches]


def started(items: Iterator[Item]) -> Iterator[Item]:
    """`items`, its first item fetched from now on by a background thread while the caller goes on: a worker starts
    its stream before it builds its model, so Ray Data's start-up (its coordinator, the listing, the first read and
    masks, each in other processes) overlaps the build. The caller fetches the later items itself."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="first-batch")
    first = pool.submit(next, items, _END)
    pool.shutdown(wait=False)  # its thread ends once the item is there

    def chained() -> Iterator[Item]:
        item = first.result()  # the fetch's exception, if any, raises here
        if item is not _END:
            yield item
            yield from items

    return chained()


def device_batches(shard: ray.data.DataIterator, device: torch.device, prefetch_batches: int = 2
                   ) -> Iterator[tuple[MaskedBatch, int]]:
    """(batch on `device`, its epoch) for each masked row of a worker's shard: the ONE CPU -> device boundary.

    Ray Data would move tensors to the Train worker's GPU itself (iter_torch_batches' device="auto"); here they
    stay on the CPU until the whole batch is unpacked, are pinned on CUDA, and then cross in one non-blocking
    copy that overlaps the previous step's compute."""
    for row in shard.iter_torch_batches(batch_size=1, device="cpu", prefetch_batches=prefetch_batches):
        batch, epoch = unpack(row)
        yield to_device(batch, device), epoch


def to_device(batch: MaskedBatch, device: torch.device) -> MaskedBatch:
    """A CPU batch on `device`: pinned first on CUDA, so that the copy is asynchronous."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)

"""The masked stream: Ray Data draws the masks (a pure function of seed, epoch and batch identity), and one
boundary moves each batch from the CPU to the device."""

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import load_config
from harness.stream import (
    SHUFFLE_BATCHES,
    VAL_EPOCH,
    MaskingStage,
    content_key,
    derived_seed,
    device_batches,
    epochs_needed,
    held_out,
    mask_rows,
    masked_datasets,
    started,
    to_device,
    unpack,
)
from objectives import mask_plan
from objectives.masking import MaskedBatch, SpecialTokens, mask_batch

TINY = Path(__file__).resolve().parents[1] / "studies" / "configs" / "tiny.yaml"
BATCH = 8


def stage_for(tokenizer, objective: str = "hybrid", passes: int = 2) -> MaskingStage:
    cfg = load_config(TINY, [f"objective.name={objective}", f"objective.passes={passes}"])
    return MaskingStage(cfg.masking, mask_plan(cfg), SpecialTokens.from_tokenizer(tokenizer), BATCH, cfg.seed)


def rows_of(masked: dict[str, np.ndarray]) -> list[MaskedBatch]:
    n = len(masked["epoch"])
    return [unpack({k: torch.from_numpy(np.asarray(v[i: i + 1])) for k, v in masked.items()})[0] for i in range(n)]


def assert_same(a: MaskedBatch, b: MaskedBatch) -> None:
    for f in fields(MaskedBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize(("objective", "passes"), [("mlm", 2), ("jepa", 2), ("hybrid", 1), ("hybrid", 2)])
def test_each_row_is_mask_batch_of_its_rows_with_the_seed_of_its_identity(objective, passes, packed_ids,
                                                                          tokenizer) -> None:
    stage = stage_for(tokenizer, objective, passes)
    ids = packed_ids(4 * BATCH + 3, 64).numpy()  # 3 rows too few for a fifth batch: dropped
    masked = mask_rows({"input_ids": ids}, stage, epoch=2)
    batches = rows_of(masked)
    assert len(batches) == 4 and set(masked["epoch"]) == {2}
    seen = []
    for batch in batches:
        tokens = batch.input_ids
        generator = torch.Generator().manual_seed(derived_seed(stage.seed, 2, content_key(tokens.numpy())))
        expected = mask_batch(tokens, torch.ones_like(tokens), stage.plan, stage.masking, stage.specials, generator)
        assert_same(batch, expected)
        seen += [tuple(r) for r in tokens.tolist()]
    assert len(set(seen)) == len(seen) and set(seen) <= {tuple(r) for r in ids.tolist()}  # a shuffle, no repeats


def test_masks_depend_on_seed_epoch_and_content_only(packed_ids, tokenizer) -> None:
    stage = stage_for(tokenizer)
    ids = packed_ids(2 * BATCH, 64).numpy()
    first, again = rows_of(mask_rows({"input_ids": ids}, stage, 0)), rows_of(mask_rows({"input_ids": ids}, stage, 0))
    for a, b in zip(first, again, strict=True):
        assert_same(a, b)
    other_epoch = rows_of(mask_rows({"input_ids": ids}, stage, 1))
    assert any(not torch.equal(a.mlm_positions, b.mlm_positions) for a, b in zip(first, other_epoch, strict=True))


def test_device_batches_cross_once_from_cpu_to_the_device(ray_session, packed_ids, tokenizer) -> None:
    """Through real Ray Data: two epochs in order, each batch unpacked on the CPU, then every tensor moved to the
    device (the meta device stands in for a GPU here: nothing may stay behind on the CPU)."""
    import ray.data

    stage = stage_for(tokenizer)
    ids = packed_ids(4 * BATCH, 64).numpy().astype(np.int32)
    rows = ray.data.from_items([{"input_ids": r} for r in ids])
    datasets = masked_datasets({"train": rows}, stage, epochs=2)
    datasets["train"].context.execution_options.preserve_order = True
    on_cpu = list(device_batches(datasets["train"].iterator(), torch.device("cpu")))
    assert [e for _, e in on_cpu] == [0] * 4 + [1] * 4
    direct = rows_of(mask_rows({"input_ids": ids}, stage, 0))
    for got, expected in zip([b for b, _ in on_cpu[:4]], direct, strict=True):
        assert_same(got, expected)


def test_a_stream_of_a_runs_batches_ends_after_them_in_order(ray_session, packed_ids, tokenizer) -> None:
    """`batches` cuts the stream (a run's steps x workers): exactly the first batches of the full stream, the
    second epoch's included."""
    import ray.data

    stage = stage_for(tokenizer)
    ids = packed_ids(4 * BATCH, 64).numpy().astype(np.int32)
    rows = ray.data.from_items([{"input_ids": r} for r in ids])
    streams = []
    for batches in (None, 5):
        train = masked_datasets({"train": rows}, stage, epochs=2, batches=batches)["train"]
        train.context.execution_options.preserve_order = True
        streams.append(list(device_batches(train.iterator(), torch.device("cpu"))))
    full, cut = streams
    assert len(full) == 8 and [e for _, e in cut] == [0, 0, 0, 0, 1]
    for (got, _), (expected, _) in zip(cut, full[:5], strict=True):
        assert_same(got, expected)


def test_one_epoch_holds_every_run_that_epochs_needed_gives_one(ray_session, packed_ids, tokenizer) -> None:
    """Blocks that cut across chunks (Ray Data hands mask_rows a short chunk at the end of each input) still leave
    one epoch enough batches for the longest run that `epochs_needed` streams over one epoch, and two for the longest
    it streams over two; a run one step longer than the first gets two epochs."""
    import ray.data

    stage = stage_for(tokenizer)
    sequences = 3 * SHUFFLE_BATCHES * BATCH + 5
    ids = packed_ids(sequences, 64).numpy().astype(np.int32)
    rows = ray.data.from_items([{"input_ids": r} for r in ids], override_num_blocks=7)
    longest = max(s for s in range(1, sequences) if epochs_needed(s, BATCH, 1, sequences) == 1)
    assert epochs_needed(longest + 1, BATCH, 1, sequences) == 2
    assert epochs_needed(longest, BATCH, 2, sequences) > 1  # two workers consume twice the rows
    one_epoch = masked_datasets({"train": rows}, stage, epochs=1)["train"]
    assert one_epoch.count() >= longest > sequences // BATCH // 2
    longest_in_two = max(s for s in range(1, 3 * sequences) if epochs_needed(s, BATCH, 1, sequences) == 2)
    assert masked_datasets({"train": rows}, stage, epochs=2)["train"].count() >= longest_in_two > longest


def test_a_started_stream_fetches_its_first_item_before_anyone_asks() -> None:
    """A worker starts its stream, then builds its model: the first item is fetched meanwhile, the items come in
    order, and a failed fetch raises where the item is asked for."""
    import threading

    fetching = threading.Event()

    def items():
        fetching.set()
        yield from range(3)

    stream = started(items())
    assert fetching.wait(timeout=60)  # a bound for a stuck thread, not a speed: nothing asked for an item yet
    assert list(stream) == [0, 1, 2]
    assert list(started(iter(()))) == []

    def broken():
        raise OSError("shard unreadable")
        yield

    failing = started(broken())
    with pytest.raises(OSError, match="shard unreadable"):
        next(failing)


SLOW_MODULE = """
import os, _thread, time

def identity(batch):
    return batch

if os.environ.get("INTERRUPT_IMPORT"):
    _thread.interrupt_main()  # as Ray cancels a running task: KeyboardInterrupt in the main thread
    time.sleep(0.2)  # the interrupt arrives here, inside the import
WHOLE = True
"""


def test_a_task_cancelled_while_its_map_function_imports_leaves_the_import_whole(tmp_path: Path) -> None:
    """Ray Data cancels the map tasks in flight when a stream ends, and Ray keeps their processes for later tasks.
    A cancellation that lands in the map function's first unpickling (torch's import) still raises, but only after
    the imports are whole, so the process's next task runs."""
    (tmp_path / "slow_module.py").write_text(SLOW_MODULE)
    code = """
import pickle, sys
sys.path.insert(0, sys.argv[1])
import slow_module
call = pickle.dumps((slow_module.identity, ()))
del sys.modules["slow_module"]
import os
os.environ["INTERRUPT_IMPORT"] = "1"
from harness.pickled_call import pickled_call
try:
    pickled_call(1, call)
except KeyboardInterrupt:
    print("cancelled")
print(sys.modules["slow_module"].WHOLE, pickled_call(5, call))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["cancelled", "True", "5"], out.stderr[-2000:]


def test_the_streams_plan_unpickles_without_torch_or_the_objectives(ray_session, packed_ids, tokenizer,
                                                                  tmp_path: Path) -> None:
    """Train's DatasetManager and Ray Data's SplitCoordinator unpickle the plan and never run it: the real plan of a
    masked stream, unpickled in a fresh interpreter, imports no torch, no objectives, no harness.stream."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.cloudpickle
    import ray.data

    ids = packed_ids(4 * BATCH, 64).numpy().astype(np.int32)
    pq.write_table(pa.table({"input_ids": list(ids)}), tmp_path / "rows.parquet")
    train = masked_datasets({"train": ray.data.read_parquet(str(tmp_path / "rows.parquet"))}, stage_for(tokenizer),
                            epochs=2, batches=3)["train"]
    (tmp_path / "plan.pkl").write_bytes(ray.cloudpickle.dumps(train))
    code = ("import sys, ray.cloudpickle; ray.cloudpickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code, str(tmp_path / "plan.pkl")], capture_output=True,
                                text=True, check=True).stdout.split())
    assert "ray.data" in loaded and not {"torch", "objectives", "harness.stream"} & loaded
    assert train.count() == 3  # and the plan still masks


def test_held_out_batches_are_the_first_rows_masked_as_their_own_epoch(packed_ids, tokenizer, tmp_path: Path) -> None:
    """Read from the prepared val files with pyarrow (no Ray Data): the files in name order, the first
    `batches` batches, each equal to the stream's masking of those rows in epoch VAL_EPOCH; the same on every read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stage = stage_for(tokenizer)
    ids = packed_ids((SHUFFLE_BATCHES + 3) * BATCH, 64).numpy().astype(np.int32)
    (tmp_path / "val").mkdir()
    half = SHUFFLE_BATCHES * BATCH - 5  # the first chunk spans both files
    for name, part in (("b.parquet", ids[half:]), ("a.parquet", ids[:half])):
        pq.write_table(pa.table({"input_ids": [list(r) for r in part]}), tmp_path / "val" / name)
    got = held_out(tmp_path, stage, SHUFFLE_BATCHES + 2)
    expected = rows_of(mask_rows({"input_ids": ids[: SHUFFLE_BATCHES * BATCH]}, stage, VAL_EPOCH)) + rows_of(
        mask_rows({"input_ids": ids[SHUFFLE_BATCHES * BATCH:]}, stage, VAL_EPOCH))
    assert len(got) == SHUFFLE_BATCHES + 2
    for a, b in zip(got, expected, strict=False):
        assert_same(a, b)
    for a, b in zip(got, held_out(tmp_path, stage, SHUFFLE_BATCHES + 2), strict=True):
        assert_same(a, b)
    assert len(held_out(tmp_path, stage, 100)) == SHUFFLE_BATCHES + 3  # all there are
    batch = to_device(got[0], torch.device("meta"))
    tensors = [getattr(batch, f.name) for f in fields(MaskedBatch)]
    assert all(t.device.type == "meta" for t in tensors if isinstance(t, torch.Tensor))
    assert batch.ctx_idx.shape[0] == BATCH and batch.stats["ctx_tgt_overlap"] == 0

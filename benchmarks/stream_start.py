"""A stream's first batch: the prepared train split read with Ray Data's file-based parquet reader (what
harness.prepare.read_prepared does) against its default reader (Ray Data 2.60's DataSourceV2 parquet reader).

    python -m benchmarks.stream_start [--config studies/configs/small.yaml] [--rounds 4]

Each round builds the masked stream of a run (harness.stream.masked_datasets over the prepared train split, cut at
40 batches), splits it as Ray Train does for one worker (streaming_split(1, equal=True)) and times from the read's
planning to the first masked batch on the worker's side (harness.stream.device_batches): Ray Data's coordinator,
its listing and the first read and masks, each in processes of their own. The two readers alternate within every
round, after a pause that lets the last round's processes end; medians and their ratio. The data is prepared and Ray
started as a run does (harness.pretrain.prepare_run, into a temporary output folder), the masks are the run's
(harness.pretrain.masking_stage).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray.data
import torch

from harness.config import load_config
from harness.prepare import read_prepared
from harness.pretrain import masking_stage, prepare_run
from harness.stream import MaskingStage, device_batches, masked_datasets


def default_reader(prepared: Path) -> dict[str, ray.data.Dataset]:
    """The train split through Ray Data's default parquet reader."""
    return {"train": ray.data.read_parquet(str(prepared / "train"), partitioning=None)}


def first_batch_s(read, prepared: Path, stage: MaskingStage) -> float:
    start = time.perf_counter()
    train = masked_datasets(read(prepared), stage, epochs=1, batches=40)["train"]
    shard = train.streaming_split(1, equal=True)[0]
    next(device_batches(shard, torch.device("cpu")))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between two streams")
    args = parser.parse_args()
    readers = {"file-based (read_prepared)": read_prepared, "default (DataSourceV2)": default_reader}
    times: dict[str, list[float]] = {name: [] for name in readers}
    with tempfile.TemporaryDirectory(prefix="bench_stream_start_") as output:
        run = prepare_run(load_config(args.config, [f"output_dir={output}"]))
        ray.data.DataContext.get_current().enable_progress_bars = False
        prepared, stage = run.data_dir, masking_stage(run.cfg, run)
        for round_ in range(args.rounds):
            order = list(readers) if round_ % 2 == 0 else list(reversed(readers))
            for name in order:
                time.sleep(args.pause)
                times[name].append(first_batch_s(readers[name], prepared, stage))
                print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print("| reader | first batch s (median) | rounds |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{x:.2f}' for x in t)} |")
    file_based, default = medians.values()
    print(f"file-based / default: {file_based / default:.2f}")


if __name__ == "__main__":
    main()

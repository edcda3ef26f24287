"""The data path: preparation throughput against the raw tokenizer, and streaming delivery against consumption.

    python -m benchmarks.data_path [--documents 2000 6000] [--rounds 2] [--config studies/configs/small.yaml]

1. For each document count: the fast tokenizer's raw batch throughput in this process (batches of 256,
   no special tokens) and `prepare()` end to end into a fresh cache (read, tokenise in Ray Data actors,
   pack, write), interleaved over rounds; tokens/s of text tokens, and the ratio prepare / raw.
2. Streaming: the rate at which `read_prepared(...)["train"].iter_torch_batches` (the Train loop's
   iterator settings) delivers batches to a consumer that does nothing, against the rate at which an MLM
   training step of the config consumes them (measured in this process).
Ray is started once (num_cpus = this machine's cores) before the timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch

from benchmarks.step_mfu import Runner, real_batch
from harness.config import load_config, resolve_location
from harness.prepare import load_tokenizer, prepare, read_manifest, read_prepared


def raw_rate(tokenizer, texts: list[str]) -> float:
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), 256):
        tokens += sum(map(len, tokenizer(texts[i:i + 256], add_special_tokens=False)["input_ids"]))
    return tokens / (time.perf_counter() - start)


def prepare_rate(data_cfg, cache: Path) -> float:
    start = time.perf_counter()
    out = prepare(data_cfg, cache)
    elapsed = time.perf_counter() - start
    counts = read_manifest(out)["counts"]
    return sum(c["tokens"] for c in counts.values()) / elapsed


def delivery_rate(prepared: Path, batch_size: int, batches: int) -> float:
    train = read_prepared(prepared)["train"]
    iterator = iter(train.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2,
                                             local_shuffle_buffer_size=8 * batch_size, local_shuffle_seed=0))
    next(iterator)  # the read has started
    start, rows = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator, None)
        if batch is None:
            break
        rows += len(batch["input_ids"])
    return rows * batch["input_ids"].shape[1] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--documents", type=int, nargs="+", default=[2000, 6000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config)
    data_cfg = dataclasses.replace(cfg.data, source=resolve_location(cfg.data.source),
                                   tokenizer=resolve_location(cfg.data.tokenizer))
    tokenizer = load_tokenizer(data_cfg.tokenizer)
    files = sorted(Path(data_cfg.source).glob("*.parquet"))
    texts = [t for f in files[:3] for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
    ray.init(num_cpus=torch.get_num_threads() or 2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    print("| documents | raw tokenizer tokens/s | prepare() tokens/s | prepare / raw |")
    print("|---|---|---|---|")
    last_prepared = None
    for n in args.documents:
        raws, preps = [], []
        for _ in range(args.rounds):
            raws.append(raw_rate(tokenizer, texts[:n]))
            with tempfile.TemporaryDirectory(prefix="bench_prep_") as cache:
                preps.append(prepare_rate(dataclasses.replace(data_cfg, max_documents=n), Path(cache)))
        print(f"| {n} | {statistics.median(raws):,.0f} | {statistics.median(preps):,.0f} | "
              f"{statistics.median(preps) / statistics.median(raws):.2f} |", flush=True)
        last_prepared = n

    with tempfile.TemporaryDirectory(prefix="bench_stream_") as cache:
        prepared = prepare(dataclasses.replace(data_cfg, max_documents=last_prepared), Path(cache))
        delivered = statistics.median(delivery_rate(prepared, cfg.optim.batch_size, 40) for _ in range(args.rounds))
    torch.set_num_threads(args.threads)
    ids, specials = real_batch(cfg)
    runner = Runner("mlm", load_config(args.config, ["objective.name=mlm"]), ids, specials)
    runner.step()
    start = time.perf_counter()
    for _ in range(4):
        runner.step()
    consumed = 4 * ids.numel() / (time.perf_counter() - start)
    print(f"\nstreaming delivery {delivered:,.0f} tokens/s vs MLM step consumption {consumed:,.0f} tokens/s "
          f"({args.threads} threads): delivery / consumption = {delivered / consumed:.1f}")


if __name__ == "__main__":
    main()

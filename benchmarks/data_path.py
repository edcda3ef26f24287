"""The data path: preparation throughput against the raw tokenizer, and streaming delivery against consumption.

    python -m benchmarks.data_path [--documents 2000 6000] [--rounds 2] [--config studies/configs/small.yaml]

1. For each document count: the fast tokenizer's raw batch throughput in this process (batches of 256,
   no special tokens) and `prepare()` end to end into a fresh cache (read, tokenise in Ray Data actors,
   pack, write), interleaved over rounds; tokens/s of text tokens, and the ratio prepare / raw.
2. Streaming: the rate at which the masked stream a Train worker reads (harness.stream: the prepared train split,
   every batch's masks drawn in Ray Data's map tasks, one row per batch, unpacked by device_batches) delivers
   batches to a consumer that does nothing, for the masks of mlm and of hybrid (passes 2), against the rate at
   which that objective's training step consumes them (benchmarks.step_mfu's step, measured in this process).
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

from benchmarks.step_mfu import Runner, masked_batches, real_rows
from harness.config import load_config, resolve_location
from harness.prepare import load_tokenizer, prepare, read_manifest, read_prepared
from harness.stream import MaskingStage, device_batches, masked_datasets
from objectives import mask_plan
from objectives.masking import SpecialTokens

STREAMED = {"mlm": ["objective.name=mlm"], "hybrid-p2": ["objective.name=hybrid", "objective.passes=2"]}


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


def delivery_rate(prepared: Path, cfg, specials: SpecialTokens, batches: int) -> float:
    """Tokens/s of masked batches as a worker's loop receives them (harness.stream.device_batches on the CPU)."""
    stage = MaskingStage(cfg.masking, mask_plan(cfg), specials, cfg.optim.batch_size, cfg.seed)
    train = masked_datasets(read_prepared(prepared, ["train"]), stage, epochs=1)["train"]
    iterator = device_batches(train.iterator(), torch.device("cpu"))
    next(iterator)  # the read has started
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        item = next(iterator, None)
        if item is None:
            break
        tokens += item[0].input_ids.numel()
    return tokens / (time.perf_counter() - start)


def consumption_rate(name: str, cfg, steps: int = 4) -> float:
    """Tokens/s that the objective's training step consumes (benchmarks.step_mfu's step, this process)."""
    ids, specials = real_rows(cfg, 4 * cfg.optim.batch_size)
    runner = Runner(name, cfg, masked_batches(cfg, ids, specials))
    runner.step()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return steps * ids.shape[1] * cfg.optim.batch_size / (time.perf_counter() - start)


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

    specials = SpecialTokens.from_tokenizer(tokenizer)
    configs = {name: load_config(args.config, overrides) for name, overrides in STREAMED.items()}
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as cache:
        prepared = prepare(dataclasses.replace(data_cfg, max_documents=last_prepared), Path(cache))
        delivered = {name: statistics.median(delivery_rate(prepared, c, specials, 40) for _ in range(args.rounds))
                     for name, c in configs.items()}
    torch.set_num_threads(args.threads)
    print(f"\n| masks of | streamed delivery tokens/s | step consumption tokens/s ({args.threads} threads) | "
          "delivery / consumption |")
    print("|---|---|---|---|")
    for name, c in configs.items():
        consumed = consumption_rate(name, c)
        print(f"| {name} | {delivered[name]:,.0f} | {consumed:,.0f} | {delivered[name] / consumed:.1f} |")


if __name__ == "__main__":
    main()

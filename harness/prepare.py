"""Data preparation: Wikipedia-style parquet shards -> packed token-id parquet shards, cached per inputs.

Runs once per (source, tokenizer, seq_len, val_fraction, max_documents); every run and every trial of a
study reuses the result:

    <cache_root>/<key>/train/*.parquet   one column `input_ids`: list<int32>, exactly seq_len long,
    <cache_root>/<key>/val/*.parquet     each row [CLS] w_1 ... w_{seq_len-2} [SEP], never padded
    <cache_root>/<key>/manifest.json     written last: source, tokenizer, seq_len, counts, key, created

A source is a local directory of *.parquet shards in the wikimedia/wikipedia schema, or
hf://owner/name/config, whose shards are read straight from the Hub through huggingface_hub's HfFileSystem
by the same code. `key` hashes the source identity (local: shard names, sizes and mtimes; hf://: the id
string), the tokenizer (vocabulary, normalizer, pre-tokenizer), seq_len, val_fraction, max_documents and
FORMAT_VERSION.
A directory with a manifest is complete and is returned without any Ray work; one without a manifest is
the leftover of an interrupted run and is removed and redone.

Validation holds out whole documents, chosen by a hash of the document id, so the split depends neither on
shard order nor on max_documents. Rows keep document order within a batch of documents, but two
preparations may order the batches differently inside a file (Ray's partitioned write hands pyarrow several
blocks at once with use_threads=True); the rows themselves are the same. Shuffle when reading.

Pipeline (Ray Data, streaming): read_parquet -> map_batches(_TokenizeAndPack) on a small actor pool ->
write_parquet partitioned by split. Packing is per batch of documents (stateless), so each batch drops its
ragged tail of fewer than seq_len - 2 tokens per split.

Resources. Train workers and Ray Data share the CPUs, and an operator that cannot be scheduled hangs the
pipeline without an error. So the tokenizer pool stays at 1-2 actors of half a CPU (the Rust tokenizer is
multi-threaded itself) and read/write tasks ask for a quarter. Ray 2.60's read_parquet also runs a ListFiles
task that takes one whole CPU whatever num_cpus says, so prepare() needs 1.5 free logical CPUs to start
(measured: it hangs with 1.0 free); read_prepared() needs 1.0. On GPU nodes the rule is: each Train worker
takes its GPU plus one or two CPUs, and the remaining CPUs are left to Ray Data (raise ACTORS there when
preparing ahead of training). With more than one node, cache_root must be on storage every node sees.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cli import prepare_parser
from harness.console import init_ray, own_logging

if __name__ == "__main__":  # --help and usage errors answer here, before pyarrow and numpy load
    prepare_parser(__doc__.splitlines()[0]).parse_args()

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import ray.data
    from transformers import PreTrainedTokenizerBase

    from harness.config import DataConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # part of the cache key: bump it when the layout or the packing changes
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
MIN_SEQ_LEN = 8
HF_PREFIX = "hf://"
OFFLINE_TOKENIZER = "../shared/data/tokenizers/bert-base-uncased beside the repository"
DOCS_PER_BATCH = 256
ACTORS = (1, 2)  # min and max size of the tokenizer actor pool
CPUS_PER_ACTOR = 0.5
CPUS_PER_IO_TASK = 0.25  # read and write tasks
MIN_BYTES_PER_FILE = 64 * 1024**2  # gather the small per-batch blocks into files of at least this size
EMPTY_SHARD = pa.table({"input_ids": pa.array([], pa.list_(pa.int32()))})


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A fast (Rust) tokenizer from a local directory holding tokenizer.json, or from a Hub id."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory not found: {path}. Point data.tokenizer at a directory holding "
            f"tokenizer.json (offline copy: {OFFLINE_TOKENIZER})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if looks_local else name_or_path)
    except (OSError, ValueError) as e:
        where = f"directory {path}" if looks_local else f"Hub id {name_or_path!r}"
        raise ValueError(
            f"cannot load a tokenizer from {where}: {e}. Without internet, point data.tokenizer at a "
            f"directory holding tokenizer.json (offline copy: {OFFLINE_TOKENIZER})"
        ) from e
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {name_or_path!r} is not a fast tokenizer: it needs a tokenizer.json")
    return tokenizer


def pack_documents(
    token_id_lists: Sequence[Sequence[int]], seq_len: int, cls_id: int, sep_id: int
) -> np.ndarray:
    """Concatenate documents' ids into one stream and cut it into rows [CLS] + seq_len-2 ids + [SEP].

    Documents may span rows. The ragged tail (fewer than seq_len - 2 ids) is dropped, never padded.
    Returns int32 of shape (N, seq_len).
    """
    body = seq_len - 2
    stream = np.fromiter(itertools.chain.from_iterable(token_id_lists), dtype=np.int32)
    n = len(stream) // body
    packed = np.empty((n, seq_len), dtype=np.int32)
    packed[:, 0] = cls_id
    packed[:, 1:-1] = stream[: n * body].reshape(n, body)
    packed[:, -1] = sep_id
    return packed


def is_val_document(doc_id: str, val_fraction: float) -> bool:
    """The held-out split: a document is in val when a hash of its id falls below val_fraction."""
    digest = hashlib.blake2b(str(doc_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


@dataclass(frozen=True)
class _Shards:
    paths: list[str]
    rows: list[int]
    identity: str  # what the cache key hashes for the source
    filesystem: Any = None  # None for local files; huggingface_hub.HfFileSystem for hf:// sources


def _list_shards(source: str) -> _Shards:
    """The source's parquet shards, each footer checked: readable, not empty, has id and text."""
    if source.startswith(HF_PREFIX):
        from huggingface_hub import HfFileSystem

        filesystem = HfFileSystem()
        root = "datasets/" + source.removeprefix(HF_PREFIX).strip("/")
        try:
            paths = sorted(filesystem.glob(f"{root}/*.parquet"))
        except Exception as e:  # network and Hub errors come in many types
            raise ValueError(
                f"cannot list the parquet shards of {source} on the Hugging Face Hub "
                f"({type(e).__name__}: {e}). Without internet, point data.source at a local directory "
                "of parquet shards"
            ) from e
        identity = source
    else:
        filesystem = None
        root = Path(source).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"data.source {source!r}: no such directory ({root})")
        files = sorted(root.glob("*.parquet"))
        paths = [str(p) for p in files]
        identity = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    if not paths:
        raise ValueError(f"data.source {source!r}: no *.parquet shards in {root}")
    rows = [_check_shard(path, filesystem) for path in paths]
    return _Shards(paths, rows, identity, filesystem)


def _check_shard(path: str, filesystem: Any) -> int:
    try:
        meta = pq.ParquetFile(path, filesystem=filesystem)
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"shard {path} is not a readable parquet file: {e}") from e
    missing = {"id", "text"} - set(meta.schema_arrow.names)
    if missing:
        raise ValueError(
            f"shard {path} lacks column(s) {sorted(missing)}: expected the wikimedia/wikipedia schema "
            f"(id, url, title, text), found {meta.schema_arrow.names}"
        )
    if meta.metadata.num_rows == 0:
        raise ValueError(f"shard {path} is empty (0 rows): remove it from the source directory")
    return meta.metadata.num_rows


def _tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    # Not the bytes of tokenizer.json: they also hold truncation/padding state, which changes per call.
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    parts = {k: spec[k] for k in ("model", "normalizer", "pre_tokenizer")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _validate(cfg: DataConfig) -> tuple[_Shards, str]:
    """Check every input before any Ray work; return the shards and the tokenizer hash."""
    if cfg.seq_len < MIN_SEQ_LEN:
        raise ValueError(f"data.seq_len={cfg.seq_len}: must be >= {MIN_SEQ_LEN}")
    if not 0 < cfg.val_fraction < 1:
        raise ValueError(f"data.val_fraction={cfg.val_fraction}: must lie in (0, 1)")
    if cfg.max_documents is not None and cfg.max_documents < 1:
        raise ValueError(f"data.max_documents={cfg.max_documents}: must be >= 1 or None")
    shards = _list_shards(cfg.source)
    tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(f"tokenizer {cfg.tokenizer!r} has no [CLS]/[SEP] tokens to wrap sequences with")
    return shards, _tokenizer_hash(tokenizer)


def _cache_key(cfg: DataConfig, shards: _Shards, tokenizer_hash: str) -> str:
    inputs = {
        "source": shards.identity,
        "tokenizer": tokenizer_hash,
        "seq_len": cfg.seq_len,
        "val_fraction": cfg.val_fraction,
        "max_documents": cfg.max_documents,
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(cfg: DataConfig) -> str:
    """The key (directory name) that prepare() uses for cfg; validates cfg, starts no Ray work."""
    return _cache_key(cfg, *_validate(cfg))


class _TokenizeAndPack:
    """Ray Data actor: loads the tokenizer once; a batch of documents -> packed train and val rows."""

    def __init__(self, tokenizer: str, seq_len: int, val_fraction: float) -> None:
        self.tokenizer = load_tokenizer(tokenizer)
        self.seq_len = seq_len
        self.val_fraction = val_fraction

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = pc.fill_null(batch["text"], "").to_pylist()
        # Whole articles exceed model_max_length: no truncation wanted, and verbose=False mutes the warning.
        ids = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]
        in_val = [is_val_document(doc_id, self.val_fraction) for doc_id in batch["id"].to_pylist()]
        return pa.concat_tables([
            self._pack([doc for doc, val in zip(ids, in_val, strict=True) if val == (split == "val")], split)
            for split in SPLITS
        ])

    def _pack(self, docs: list[list[int]], split: str) -> pa.Table:
        packed = pack_documents(docs, self.seq_len, self.tokenizer.cls_token_id, self.tokenizer.sep_token_id)
        offsets = np.arange(0, packed.size + 1, self.seq_len, dtype=np.int32)
        input_ids = pa.ListArray.from_arrays(offsets, packed.ravel())
        return pa.table({"input_ids": input_ids, "split": pa.array([split] * len(packed), pa.string())})


def _read_documents(shards: _Shards, max_documents: int | None) -> ray.data.Dataset:
    """The source's documents (id, text) in shard order; with max_documents, the first ones only."""
    import ray.data

    paths = shards.paths
    if max_documents is not None:  # only the shards that the cap reaches
        paths = paths[: int(np.searchsorted(np.cumsum(shards.rows), max_documents)) + 1]
    ds = ray.data.read_parquet(paths, filesystem=shards.filesystem, num_cpus=CPUS_PER_IO_TASK)
    ds.context.execution_options.preserve_order = True  # this dataset only: limit() keeps the first rows
    ds = ds.select_columns(["id", "text"])
    return ds if max_documents is None else ds.limit(max_documents)


def _tokenize_and_write(cfg: DataConfig, shards: _Shards, out: Path) -> None:
    """The Ray Data pipeline: documents -> tokenizer actors (tokenise, split, pack) -> out/train, out/val."""
    import ray.data

    init_ray()  # here, not in main(): a cache hit starts no Ray at all
    local = Path(cfg.tokenizer).expanduser()
    tokenizer = str(local.resolve()) if local.exists() else cfg.tokenizer  # actors may run in another cwd
    packed = _read_documents(shards, cfg.max_documents).map_batches(
        _TokenizeAndPack,
        fn_constructor_kwargs={"tokenizer": tokenizer, "seq_len": cfg.seq_len, "val_fraction": cfg.val_fraction},
        batch_size=DOCS_PER_BATCH,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=ACTORS[0], max_size=ACTORS[1]),
        num_cpus=CPUS_PER_ACTOR,
    )
    # partitioning_flavor=None: directories `train/` and `val/` (not `split=train/`); the split column
    # becomes the directory and is not stored in the files.
    packed.write_parquet(str(out), partition_cols=["split"], partitioning_flavor=None,
                         min_bytes_per_file=MIN_BYTES_PER_FILE, ray_remote_args={"num_cpus": CPUS_PER_IO_TASK})
    for split in SPLITS:  # a split that got no rows gets one empty shard, so that it still reads back
        if not any((out / split).glob("*.parquet")):
            (out / split).mkdir(parents=True, exist_ok=True)
            pq.write_table(EMPTY_SHARD, out / split / "empty.parquet")


def _count_val_documents(shards: _Shards, max_documents: int | None, val_fraction: float) -> int:
    """Val documents among the first max_documents, counted on the driver from the id column alone."""
    ids = (doc_id for path in shards.paths
           for batch in pq.ParquetFile(path, filesystem=shards.filesystem).iter_batches(columns=["id"])
           for doc_id in batch["id"].to_pylist())
    return sum(is_val_document(doc_id, val_fraction) for doc_id in itertools.islice(ids, max_documents))


def _counts(cfg: DataConfig, shards: _Shards, out: Path) -> dict[str, dict[str, int]]:
    """Documents, sequences and tokens ([CLS] and [SEP] included) per split, from the written shards."""
    total = sum(shards.rows) if cfg.max_documents is None else min(sum(shards.rows), cfg.max_documents)
    n_val = _count_val_documents(shards, cfg.max_documents, cfg.val_fraction)
    documents = {"train": total - n_val, "val": n_val}
    counts = {}
    for split in SPLITS:
        sequences = sum(pq.ParquetFile(f).metadata.num_rows for f in (out / split).glob("*.parquet"))
        counts[split] = {"documents": documents[split], "sequences": sequences, "tokens": sequences * cfg.seq_len}
    return counts


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock across this node's processes, so two trials never prepare one key at once."""
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def prepare(cfg: DataConfig, cache_root: Path) -> Path:
    """Tokenise, pack and split cfg.source once; return the prepared directory (see the module doc)."""
    shards, tokenizer_hash = _validate(cfg)
    key = _cache_key(cfg, shards, tokenizer_hash)
    out = Path(cache_root) / key
    if (out / MANIFEST).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f"{key}.lock"):
        if (out / MANIFEST).is_file():  # another process finished it while this one waited
            return out
        if out.exists():
            log.info("removing %s: an interrupted preparation (no manifest)", out)
            shutil.rmtree(out)
        start = time.monotonic()
        log.info("preparing %s -> %s", cfg.source, out)
        _tokenize_and_write(cfg, shards, out)
        manifest = {
            "key": key,
            "format_version": FORMAT_VERSION,
            "source": cfg.source,
            "source_hash": hashlib.sha256(shards.identity.encode()).hexdigest()[:16],
            "tokenizer": cfg.tokenizer,
            "tokenizer_hash": tokenizer_hash,
            "seq_len": cfg.seq_len,
            "val_fraction": cfg.val_fraction,
            "max_documents": cfg.max_documents,
            "counts": _counts(cfg, shards, out),
            "seconds": round(time.monotonic() - start, 1),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = out / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, out / MANIFEST)  # atomic, and last: the manifest marks the directory complete
    log.info("prepared %s in %.1f s", out, manifest["seconds"])
    return out


def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {prepared_dir} is not a finished preparation. Run prepare() "
            "(python -m harness.prepare) first"
        )
    return json.loads(path.read_text())


def read_prepared(prepared_dir: Path, splits: Sequence[str] = SPLITS) -> dict[str, ray.data.Dataset]:
    """The prepared datasets of `splits` ("train", "val"): one column input_ids (see the module doc on row order).

    Read with Ray Data's file-based parquet reader (`DataContext.use_datasource_v2 = False` for these reads only):
    it reads the few footers of a preparation here, where the read is planned. Ray Data 2.60's default reader lists
    them at the stream's start in a task and a `FooterReader` actor, two more processes on the way to a run's first
    batch (BENCHMARKS.md "A stream's first batch": 6.9 -> 4.2 s on the development machine)."""
    import ray.data

    read_manifest(prepared_dir)
    context = ray.data.DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return {split: ray.data.read_parquet(str(Path(prepared_dir) / split), partitioning=None) for split in splits}
    finally:
        context.use_datasource_v2 = default


def main(argv: Sequence[str] | None = None) -> None:
    from harness.config import ConfigError, DataConfig

    parser = prepare_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    # The place for a later --config file.yaml: it will build this DataConfig instead of the flags.
    try:
        cfg = DataConfig(source=args.source, tokenizer=args.tokenizer, seq_len=args.seq_len,
                         val_fraction=args.val_fraction, max_documents=args.max_documents)
    except ConfigError as e:
        parser.error(str(e))

    own_logging()
    start = time.monotonic()
    out = prepare(cfg, args.out)
    manifest = read_manifest(out)
    print(f"prepared data in {out} ({time.monotonic() - start:.1f} s this call; "
          f"{manifest['seconds']} s to build, created {manifest['created']})")
    for split, c in manifest["counts"].items():
        print(f"  {split:5s}  documents {c['documents']:>9,d}  sequences {c['sequences']:>10,d}  "
              f"tokens {c['tokens']:>13,d}")


if __name__ == "__main__":
    main()

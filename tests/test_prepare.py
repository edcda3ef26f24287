"""harness/prepare.py on the real Wikipedia excerpt, the offline tokenizer and the session's Ray."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.prepare import (
    MANIFEST,
    SPLITS,
    cache_key,
    is_val_document,
    load_tokenizer,
    pack_documents,
    prepare,
    read_manifest,
    read_prepared,
)

CLS, SEP, PAD = 101, 102, 0
SEQ_LEN = 64
N_DOCS = 100  # fewer than DOCS_PER_BATCH: one batch, so the packed stream can be rebuilt exactly
VAL_FRACTION = 0.2
LEFTOVER = "interrupted.parquet"


@dataclass(frozen=True)
class DataSpec:  # the fields of harness.config.DataConfig
    source: str
    tokenizer: str
    seq_len: int = 128
    val_fraction: float = 0.01
    max_documents: int | None = None


@pytest.fixture(scope="module")
def spec(wiki_dir: Path, tokenizer_path: Path) -> DataSpec:
    return DataSpec(str(wiki_dir), str(tokenizer_path), SEQ_LEN, VAL_FRACTION, N_DOCS)


@pytest.fixture(scope="module")
def prepared(ray_session, spec: DataSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one real preparation of this module, over the leftover of an interrupted one."""
    cache_root = tmp_path_factory.mktemp("cache")
    leftover = cache_root / cache_key(spec) / "train" / LEFTOVER
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file, no manifest")
    return prepare(spec, cache_root)


def _rows(split_dir: Path) -> np.ndarray:
    """All rows of a split, in file and row order, as an (N, seq_len) array."""
    tables = [pq.read_table(f) for f in sorted(split_dir.glob("*.parquet"))]
    column = pa.concat_tables(tables)["input_ids"]
    return np.asarray(column.to_pylist(), dtype=np.int32).reshape(len(column), -1)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_pack_documents_cuts_exact_windows() -> None:
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]  # 10 ids, windows of 5 - 2 = 3: the tail [10] is dropped
    packed = pack_documents(docs, seq_len=5, cls_id=CLS, sep_id=SEP)
    assert packed.dtype == np.int32
    np.testing.assert_array_equal(packed, [[CLS, 1, 2, 3, SEP], [CLS, 4, 5, 6, SEP], [CLS, 7, 8, 9, SEP]])


def test_pack_documents_never_pads() -> None:
    assert pack_documents([[1, 2], [3]], seq_len=8, cls_id=CLS, sep_id=SEP).shape == (0, 8)
    assert pack_documents([], seq_len=8, cls_id=CLS, sep_id=SEP).shape == (0, 8)
    assert pack_documents([list(range(1, 13))], seq_len=8, cls_id=CLS, sep_id=SEP).shape == (2, 8)


def test_split_is_deterministic_and_near_the_fraction(wiki_dir: Path) -> None:
    ids = pq.read_table(sorted(wiki_dir.glob("*.parquet"))[0], columns=["id"])["id"].to_pylist()
    val = {i for i in ids if is_val_document(i, 0.1)}
    assert val == {i for i in ids if is_val_document(i, 0.1)}
    assert 0.07 < len(val) / len(ids) < 0.13
    assert val <= {i for i in ids if is_val_document(i, 0.3)}  # a larger fraction only adds documents


def test_sequences_are_packed_cls_sep_without_padding(prepared: Path, tokenizer_path: Path) -> None:
    tokenizer = load_tokenizer(str(tokenizer_path))
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # [UNK] is text the vocabulary lacks
    for split in SPLITS:
        rows = _rows(prepared / split)
        assert rows.shape[0] > 0 and rows.shape[1] == SEQ_LEN
        assert (rows[:, 0] == CLS).all() and (rows[:, -1] == SEP).all()
        assert not (rows == PAD).any()
        assert not np.isin(rows[:, 1:-1], list(special)).any()


def test_splits_hold_whole_documents_in_order(prepared: Path, spec: DataSpec, tokenizer_path: Path) -> None:
    """Rebuild each split's stream from the first N_DOCS documents: the written rows are exactly its windows.

    So every document lies in exactly one split, whole, and max_documents took the first documents.
    """
    docs = pq.read_table(sorted(Path(spec.source).glob("*.parquet"))[0], columns=["id", "text"]).slice(0, N_DOCS)
    tokenizer = load_tokenizer(str(tokenizer_path))
    ids = tokenizer(docs["text"].to_pylist(), add_special_tokens=False, verbose=False)["input_ids"]
    in_val = [is_val_document(i, VAL_FRACTION) for i in docs["id"].to_pylist()]
    assert 0 < sum(in_val) < N_DOCS
    for split in SPLITS:
        split_docs = [d for d, val in zip(ids, in_val, strict=True) if val == (split == "val")]
        expected = pack_documents(split_docs, SEQ_LEN, CLS, SEP)
        np.testing.assert_array_equal(_rows(prepared / split), expected)


def test_manifest_counts_match_the_shards(prepared: Path, spec: DataSpec) -> None:
    manifest = read_manifest(prepared)
    assert manifest["key"] == prepared.name == cache_key(spec)
    assert (manifest["source"], manifest["tokenizer"], manifest["seq_len"]) == (
        spec.source, spec.tokenizer, SEQ_LEN)
    counts = manifest["counts"]
    assert counts["train"]["documents"] + counts["val"]["documents"] == N_DOCS
    datasets = read_prepared(prepared)
    for split in SPLITS:
        assert counts[split]["sequences"] == datasets[split].count() == len(_rows(prepared / split))
        assert counts[split]["tokens"] == counts[split]["sequences"] * SEQ_LEN


def test_the_prepared_splits_stream_without_a_listing_task_or_footer_actor(prepared: Path) -> None:
    """read_prepared plans its reads with Ray Data's file-based parquet reader: streaming a split starts no ListFiles
    task and no FooterReader actor (each a process on the way to a run's first batch), yields the split's rows, and
    leaves Ray Data's default reader on for every other read."""
    import ray.data
    from ray.util.state import list_actors, list_tasks

    def listing_processes() -> tuple[int, int]:
        return (len(list_actors(filters=[("class_name", "=", "FooterReader")], limit=10_000)),
                len(list_tasks(filters=[("name", "=", "ListFiles")], limit=10_000)))

    default = ray.data.DataContext.get_current().use_datasource_v2
    before = listing_processes()
    train = read_prepared(prepared, ["train"])["train"]
    assert ray.data.DataContext.get_current().use_datasource_v2 == default
    streamed = np.stack([row["input_ids"] for row in train.iter_rows()])
    expected = _rows(prepared / "train")
    assert sorted(map(tuple, streamed.tolist())) == sorted(map(tuple, expected.tolist()))
    assert listing_processes() == before


def test_second_prepare_is_a_no_op(prepared: Path, spec: DataSpec) -> None:
    before = _snapshot(prepared.parent)
    assert prepare(spec, prepared.parent) == prepared
    assert _snapshot(prepared.parent) == before  # same files, manifest and shards untouched


def test_key_changes_with_the_inputs(spec: DataSpec) -> None:
    assert cache_key(spec) == cache_key(dataclasses.replace(spec))
    for change in ({"seq_len": 2 * SEQ_LEN}, {"val_fraction": 0.1}, {"max_documents": None}):
        assert cache_key(spec) != cache_key(dataclasses.replace(spec, **change))


def test_interrupted_preparation_was_removed_and_redone(prepared: Path) -> None:
    assert (prepared / MANIFEST).is_file()
    assert not (prepared / "train" / LEFTOVER).exists()


def _write_shard(path: Path, columns: dict[str, list[str]]) -> None:
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), path)


def test_read_prepared_needs_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        read_prepared(tmp_path)


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("missing source", FileNotFoundError, "no such directory"),
        ("no shards", ValueError, r"no \*\.parquet shards"),
        ("empty shard", ValueError, "empty.parquet is empty"),
        ("not parquet", ValueError, "not a readable parquet file"),
        ("no text column", ValueError, r"lacks column\(s\) \['text'\]"),
        ("missing tokenizer", FileNotFoundError, "tokenizer directory not found.*tokenizer.json"),
        ("short seq_len", ValueError, "seq_len=4: must be >= 8"),
    ],
)
def test_bad_inputs_fail_early_and_clearly(
    case: str, error: type[Exception], match: str, wiki_dir: Path, tokenizer_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "shards"
    source.mkdir()
    (source / "train-00000.parquet").symlink_to(sorted(wiki_dir.glob("*.parquet"))[0])
    spec = DataSpec(str(source), str(tokenizer_path), max_documents=10)
    if case == "missing source":
        spec = dataclasses.replace(spec, source=str(tmp_path / "nowhere"))
    elif case == "no shards":
        (source / "train-00000.parquet").unlink()
    elif case == "empty shard":
        _write_shard(source / "empty.parquet", {"id": [], "url": [], "title": [], "text": []})
    elif case == "not parquet":
        (source / "broken.parquet").write_bytes(b"")
    elif case == "no text column":
        _write_shard(source / "train-00001.parquet", {"id": ["1"], "title": ["A title"]})
    elif case == "missing tokenizer":
        spec = dataclasses.replace(spec, tokenizer=str(tmp_path / "no-tokenizer"))
    elif case == "short seq_len":
        spec = dataclasses.replace(spec, seq_len=4)
    with pytest.raises(error, match=match):
        prepare(spec, tmp_path / "cache")  # no ray_session: these must fail before any Ray work
    assert not (tmp_path / "cache").exists()

"""Shared fixtures: the offline real data in ../shared/data and one scratch directory per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"offline data not found at {SHARED_DATA}: tests need ../shared/data beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer_path(shared_data: Path) -> Path:
    return shared_data / "tokenizers" / "bert-base-uncased"


@pytest.fixture(scope="session")
def wiki_dir(shared_data: Path) -> Path:
    return shared_data / "wikipedia" / "enwiki-2015-excerpt"


@pytest.fixture(scope="session")
def glue_dir(shared_data: Path) -> Path:
    return shared_data / "glue"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path: Path):
    from harness.prepare import load_tokenizer

    return load_tokenizer(str(tokenizer_path))


@pytest.fixture(scope="session")
def wiki_texts(wiki_dir: Path) -> list[str]:
    """The first 64 real Wikipedia articles of the offline excerpt."""
    import pyarrow.parquet as pq

    table = pq.read_table(wiki_dir / "train-00000-of-00016.parquet", columns=["text"])
    return table.column("text").to_pylist()[:64]


@pytest.fixture(scope="session")
def packed_ids(tokenizer, wiki_texts: list[str]):
    """packed_ids(rows, seq_len) -> (rows, seq_len) LongTensor of real packed [CLS] ... [SEP] windows."""
    import torch

    from harness.prepare import pack_documents

    docs = tokenizer(wiki_texts, add_special_tokens=False)["input_ids"]

    def make(rows: int, seq_len: int) -> torch.Tensor:
        packed = pack_documents(docs, seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
        assert len(packed) >= rows, f"only {len(packed)} windows of {seq_len} tokens in the test articles"
        return torch.from_numpy(packed[:rows]).long()

    return make


@pytest.fixture(scope="session")
def padded_sentences(tokenizer, wiki_texts: list[str]):
    """Real sentences of varied length, tokenised with padding: (input_ids, attention_mask)."""
    sentences = [s.strip() for text in wiki_texts[:8] for s in text.split(". ")[:4] if len(s.split()) > 3]
    enc = tokenizer(sentences[:24], padding=True, truncation=True, max_length=64, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, with a small object store. Per-test init/shutdown
    costs ~4 s each, so every Ray test shares this one."""
    import tempfile

    import ray

    # Ray's unix socket paths must stay under 107 bytes: a short dir, not pytest's deep tmp path.
    temp_dir = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    # The local cluster inherits what `import harness` (done by every test module) set for a local Ray
    # (harness.console.local_ray_environment: one parquet footer actor, no preemption watcher, idle processes kept).
    ray.init(
        num_cpus=4,  # logical CPUs: Train workers take fractions, Ray Data's tasks must still fit
        object_store_memory=200 * 1024**2,
        include_dashboard=True,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    yield ray
    ray.shutdown()

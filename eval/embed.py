"""Frozen Hugging Face encoders -> per-token hidden states, computed once per task and split.

Token states are kept ragged (all real tokens of all texts stacked, plus offsets), so padding never
enters a cache and memory follows the real token count. `StateCache` memoises them in memory and,
given a directory, on disk, keyed by encoder + task + split + max length + mask mode (+ a hash of the texts).

`attend_padding=True` replays the reference code (studies/paper/REFERENCE.md §2.1): every text is padded to
max_len and the encoder runs WITHOUT an attention mask, so real tokens attend to the padding; the states of
the real tokens are kept as usual.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")

logger = logging.getLogger(__name__)


def load_encoder(
    path: str | Path, tokenizer: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hugging Face encoder directory (config.json + weights) frozen, in eval mode, on CPU.

    The tokenizer comes from `tokenizer` when given, else from the encoder directory itself.
    Only local files are read: nothing is downloaded.
    """
    from transformers import AutoModel, AutoTokenizer  # seconds to import: only where an encoder is loaded

    path, tok_path = check_encoder(path, tokenizer)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(tok_path, local_files_only=True)


def check_encoder(path: str | Path, tokenizer: str | Path | None = None) -> tuple[Path, Path]:
    """Fail early with a fix when the encoder or tokenizer folder is unusable; returns both paths."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"encoder {path} is not a Hugging Face model directory (no config.json there): "
            "pass --encoder with a save_pretrained() directory"
        )
    tok_path = Path(tokenizer) if tokenizer is not None else path
    if not any((tok_path / f).is_file() for f in TOKENIZER_FILES):
        hint = "pass --tokenizer PATH" if tokenizer is None else "check --tokenizer"
        raise FileNotFoundError(
            f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tok_path}: {hint} "
            "(offline bert-base-uncased: ../shared/data/tokenizers/bert-base-uncased)"
        )
    return path, tok_path


def encoder_key(path: str | Path) -> str:
    """Cache key of an encoder: its directory name plus a hash of its path, config and weight files."""
    path = Path(path).resolve()
    h = hashlib.sha1(str(path).encode())
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "config.json"):
            stat = f.stat()
            h.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{path.name}-{h.hexdigest()[:10]}"


@dataclass
class TokenStates:
    """Last-layer states of the real tokens of n texts: text i is rows offsets[i]:offsets[i+1]."""

    states: np.ndarray  # (total_tokens, hidden) float32
    input_ids: np.ndarray  # (total_tokens,) int64
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.states.shape[1]

    def ids(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    def padded(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (len(idx), max_len, hidden) states and their (len(idx), max_len) bool mask."""
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        positions = np.arange(int(lengths.max()))[None, :]
        mask = positions < lengths[:, None]
        h = np.zeros((*mask.shape, self.dim), dtype=np.float32)
        h[mask] = self.states[(self.offsets[idx][:, None] + positions)[mask]]
        return torch.from_numpy(h), torch.from_numpy(mask)


def padded_batches(
    ids: list[list[int]], batch_size: int, pad_id: int = 0, width: int | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Batches of token id lists in length order (little padding work): (the batch's indices into ids,
    right-padded (batch, longest) input ids, their bool mask of real tokens); `width` pads every batch to it."""
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(ids), batch_size):
        idx = order[start : start + batch_size]
        cols = lengths[idx].max() if width is None else max(width, lengths[idx].max())
        mask = torch.from_numpy(np.arange(cols)[None, :] < lengths[idx][:, None])
        input_ids = torch.full(mask.shape, pad_id, dtype=torch.long)
        input_ids[mask] = torch.cat([torch.tensor(ids[i], dtype=torch.long) for i in idx])
        yield idx, input_ids, mask


@torch.no_grad()
def encode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_len: int = 128,
    batch_size: int = 64,
    attend_padding: bool = False,
) -> TokenStates:
    """Run the frozen encoder over texts in length-sorted batches with attention masks; with attend_padding,
    every batch is padded to max_len and attended in full (no mask), as the reference code ran."""
    ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    states = np.empty((offsets[-1], model.config.hidden_size), dtype=np.float32)
    pad_id = tokenizer.pad_token_id or 0
    batches = padded_batches(ids, batch_size, pad_id, width=max_len if attend_padding else None)
    for b, (idx, input_ids, mask) in enumerate(batches):
        attention = torch.ones_like(input_ids) if attend_padding else mask.long()
        out = model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        for row, i in enumerate(idx):
            states[offsets[i] : offsets[i + 1]] = out[row][mask[row]].float().numpy()
        if (b + 1) % 50 == 0:
            logger.info("encoded %d/%d texts", min((b + 1) * batch_size, len(texts)), len(texts))
    return TokenStates(states, np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]), offsets)


class StateCache:
    """Token states of one encoder, computed once per (task, split) and reused by every pooling."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        key: str,
        max_len: int = 128,
        batch_size: int = 64,
        cache_dir: Path | None = None,
        attend_padding: bool = False,
    ) -> None:
        self.model, self.tokenizer, self.key = model, tokenizer, key
        self.max_len, self.batch_size, self.attend_padding = max_len, batch_size, attend_padding
        self.cache_dir = cache_dir
        self._memory: dict[str, TokenStates] = {}

    def get(self, task: str, split: str, texts: list[str]) -> TokenStates:
        digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:10]
        mode = "-nomask" if self.attend_padding else ""
        name = f"{task}-{split}-len{self.max_len}{mode}-{digest}"
        if name in self._memory:
            return self._memory[name]
        file = self.cache_dir / self.key / f"{name}.npz" if self.cache_dir is not None else None
        if file is not None and file.is_file():
            with np.load(file) as z:
                states = TokenStates(z["states"], z["input_ids"], z["offsets"])
            logger.info("%s/%s: %d texts from cache %s", task, split, len(texts), file)
        else:
            logger.info("%s/%s: encoding %d texts", task, split, len(texts))
            states = encode(self.model, self.tokenizer, texts, self.max_len, self.batch_size, self.attend_padding)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                np.savez(file, states=states.states, input_ids=states.input_ids, offsets=states.offsets)
        self._memory[name] = states
        return states

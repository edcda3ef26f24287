"""The `model` section of a run's config: the encoder and the heads' sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import require


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["bert"] = "bert"  # the registry in models/encoder.py leaves room for e.g. ModernBERT
    vocab_size: int = 30522
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    dropout: float = 0.1  # hidden-state dropout (BERT's hidden_dropout_prob)
    attention_dropout: float | None = None  # on attention probabilities; None: = dropout. > 0 makes CPU SDPA
    # fall back from its flash kernel to the math path (see BENCHMARKS.md)
    tie_mlm_head: bool = True  # MLM decoder shares the input embedding matrix
    predictor_depth: int = 4
    predictor_width: int = 128
    predictor_heads: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "predictor_depth", "predictor_width", "predictor_heads"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                 f"must be divisible by num_heads={self.num_heads}")
        require(self.predictor_width % self.predictor_heads == 0, "predictor_width", self.predictor_width,
                 f"must be divisible by predictor_heads={self.predictor_heads}")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must lie in [0, 1)")
        require(self.attention_dropout is None or 0 <= self.attention_dropout < 1, "attention_dropout",
                 self.attention_dropout, "must lie in [0, 1) or be null")

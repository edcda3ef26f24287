"""The shared text encoder: a Hugging Face model built from its config class, randomly initialised.

Built with transformers' SDPA attention and torch's dropout; honours padding masks; encodes a subset of
positions when given their original position ids (the JEPA context). Exported with `save_pretrained`, so
evaluation (and any HF tool) reloads it with `transformers.AutoModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from models.config import ModelConfig


def _bert(cfg: ModelConfig) -> PreTrainedModel:
    # Imported here: transformers takes seconds to import, and the processes that only mask batches (Ray Data's
    # tasks, via objectives.masking) or hold the run's plan never build an encoder.
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        pad_token_id=0,
    )
    return BertModel._from_config(config, attn_implementation="sdpa", add_pooling_layer=False)


# One builder per architecture; each returns an HF encoder whose forward takes input_ids,
# attention_mask and position_ids and whose output has `last_hidden_state`.
ENCODERS: dict[str, Callable[[ModelConfig], PreTrainedModel]] = {"bert": _bert}


def build_encoder(cfg: ModelConfig) -> PreTrainedModel:
    if cfg.arch not in ENCODERS:
        raise ValueError(f"model.arch={cfg.arch!r}: must be one of {sorted(ENCODERS)}")
    return ENCODERS[cfg.arch](cfg)


def encode(encoder: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None = None,
           position_ids: Tensor | None = None) -> Tensor:
    """Last hidden states (B, L, D). With `position_ids`, `input_ids` may be a gathered subset of a
    sequence: each token keeps its original position. attention_mask=None means no padding."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.last_hidden_state


def export_encoder(encoder: PreTrainedModel, out_dir: str | Path, tokenizer=None) -> Path:
    """Write the encoder in HF format (config.json + model.safetensors), with `tokenizer` saved beside it."""
    out_dir = Path(out_dir)
    encoder.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


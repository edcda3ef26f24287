"""The shared text encoder: a Hugging Face model built from its config class, randomly initialised.

Built with SDPA attention; honours padding masks; encodes a subset of positions when given their
original position ids (the JEPA context); `encode_at` returns the last hidden states at chosen positions
only, computing the last layer there only (the EMA target's latents at the target blocks). Exported with
`save_pretrained`, so evaluation (and any HF tool) reloads it with `transformers.AutoModel`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor
from transformers import AutoModel, BertConfig, BertModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

from models.attention import LANE_SDPA
from models.dropout import use_lane_dropout

if TYPE_CHECKING:
    from harness.config import ModelConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _bert(cfg: ModelConfig) -> PreTrainedModel:
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
    # The HF export keeps torch's nn.Dropout (LaneDropout holds no weights: nothing to save).
    return use_lane_dropout(BertModel._from_config(config, attn_implementation=LANE_SDPA, add_pooling_layer=False))


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


def encode_at(encoder: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None, positions: Tensor
              ) -> Tensor:
    """The last hidden states at `positions` (B, K) -> (B, K, D): encode(...) gathered there, with the last
    layer's queries, attention output, projection and FFN computed at those K positions only (its keys and
    values still cover every token). For a BERT encoder; any other runs in full and is gathered."""
    index = positions[..., None]
    if not isinstance(encoder, BertModel):
        hidden = encode(encoder, input_ids, attention_mask)
        return hidden.gather(1, index.expand(-1, -1, hidden.shape[-1]))
    hidden = encoder.embeddings(input_ids=input_ids)
    mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
    *lower, last = encoder.encoder.layer
    for layer in lower:
        hidden = layer(hidden, mask)
    queries = hidden.gather(1, index.expand(-1, -1, hidden.shape[-1]))
    if mask is not None and mask.shape[2] > 1:  # boolean (B, 1, L, L): keep the rows of the kept queries
        mask = mask.gather(2, index[:, None].expand(-1, mask.shape[1], -1, mask.shape[3]))
    attended = _self_attention(last.attention.self, queries, hidden, mask)
    hidden = last.attention.output(attended, queries)
    return last.feed_forward_chunk(hidden)


def _self_attention(module: BertSelfAttention, queries: Tensor, hidden: Tensor, mask: Tensor | None) -> Tensor:
    """BertSelfAttention.forward with queries from `queries` (B, K, D), keys and values from `hidden` (B, L, D)."""
    def heads(x: Tensor) -> Tensor:
        return x.view(*x.shape[:2], -1, module.attention_head_size).transpose(1, 2)

    attend = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)
    out, _ = attend(module, heads(module.query(queries)), heads(module.key(hidden)), heads(module.value(hidden)),
                    mask, dropout=module.dropout.p if module.training else 0.0, scaling=module.scaling)
    return out.reshape(*queries.shape[:2], -1)


def export_encoder(encoder: PreTrainedModel, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write the encoder in HF format (config.json + model.safetensors), with the tokenizer beside it."""
    out_dir = Path(out_dir)
    encoder.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, out_dir / name)
    return out_dir


def load_exported(path: str | Path) -> PreTrainedModel:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an HF export (no config.json); export with models.export_encoder")
    return AutoModel.from_pretrained(path, attn_implementation="sdpa")

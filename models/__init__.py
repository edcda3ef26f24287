"""Encoder, heads and EMA target, gathered in one container the objectives train."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from models.ema import ema_update, make_target, momentum_at
from models.encoder import build_encoder, encode, export_encoder
from models.heads import MLMHead, Predictor

if TYPE_CHECKING:
    from models.config import ModelConfig

__all__ = ["PretrainNets", "build_encoder", "encode", "export_encoder", "momentum_at"]


class PretrainNets(nn.Module):
    """The networks one objective needs: the shared encoder always; the MLM head for MLM; the
    predictor and the EMA target encoder for JEPA. Unneeded parts are not built (DDP then needs no
    find_unused_parameters)."""

    def __init__(self, cfg: ModelConfig, *, mlm: bool, jepa: bool):
        super().__init__()
        self.encoder = build_encoder(cfg)
        self.mlm_head = None
        self.predictor = None
        self.target = None
        if mlm:
            tied = self.encoder.get_input_embeddings() if cfg.tie_mlm_head else None
            self.mlm_head = MLMHead(cfg.hidden_size, cfg.vocab_size, tied)
        if jepa:
            self.predictor = Predictor(cfg.hidden_size, cfg.predictor_width, cfg.predictor_depth,
                                       cfg.predictor_heads, cfg.max_position_embeddings)
            self.target = make_target(self.encoder)

    def train(self, mode: bool = True) -> PretrainNets:
        super().train(mode)
        if self.target is not None:
            self.target.eval()  # the EMA target never runs dropout
        return self

    def update_target(self, momentum: float) -> None:
        if self.target is not None:
            ema_update(self.target, self.encoder, momentum)

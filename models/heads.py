"""Heads on top of the encoder: the BERT MLM head and the I-JEPA predictor (for 1-D sequences)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLMHead(nn.Module):
    """BERT's transform (dense, GELU, LayerNorm) + vocabulary decoder. Call it on masked positions only:
    at d=256 the 30,522-way decoder is most of a step's FLOPs if applied to every position."""

    def __init__(self, hidden_size: int, vocab_size: int, tied_embedding: nn.Embedding | None = None):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        nn.init.normal_(self.decoder.weight, std=0.02)
        nn.init.zeros_(self.decoder.bias)
        if tied_embedding is not None:
            self.decoder.weight = tied_embedding.weight

    def transform(self, hidden: Tensor) -> Tensor:
        return self.norm(F.gelu(self.dense(hidden)))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden))


class Block(nn.Module):
    """Pre-norm transformer block with SDPA attention; no padding (predictor rows are equal length)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, outputs_from: int = 0) -> Tensor:
        """x (B, N, W) -> (B, N - outputs_from, W): every position attends, only the last N - outputs_from
        positions are computed past the keys and values (their queries, the projection and the MLP)."""
        b, n, w = x.shape
        head = (self.heads, w // self.heads)
        h = self.norm1(x)
        # q, k, v as (B, heads, N, head width) views of the projection's (B, N, 3, heads, head width) output:
        # unbinding dim 2 keeps their gradients' stack in the projection's own layout (no reordering copy), and
        # SDPA's output, (B, N, heads, head width) in memory, reshapes back to (B, N, W) without a copy.
        if outputs_from == 0:
            q, k, v = (t.transpose(1, 2) for t in self.qkv(h).view(b, n, 3, *head).unbind(2))
        else:
            x = x[:, outputs_from:]
            q = F.linear(h[:, outputs_from:], self.qkv.weight[:w], self.qkv.bias[:w]).view(b, -1, *head).transpose(1, 2)
            kv = F.linear(h, self.qkv.weight[w:], self.qkv.bias[w:]).view(b, n, 2, *head)
            k, v = (t.transpose(1, 2) for t in kv.unbind(2))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], w)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class Predictor(nn.Module):
    """Context latents + a learned mask token at each target position (plus that position's embedding)
    -> a narrow transformer -> predicted latents, in the encoder width, at the target positions.

    Each of the P target blocks is predicted in its own row (the context repeated P times), as in
    I-JEPA, so target blocks never attend to each other. The last block computes outputs at the target
    queries only (the context's outputs there would be thrown away): same predictions, fewer FLOPs."""

    def __init__(self, encoder_width: int, width: int, depth: int, heads: int, max_positions: int):
        super().__init__()
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.pos = nn.Embedding(max_positions, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, encoder_width)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, context: Tensor, ctx_idx: Tensor, tgt_idx: Tensor) -> Tensor:
        """context (B, Kc, D), ctx_idx (B, Kc), tgt_idx (P, B, Kt) -> predictions (P, B, Kt, D)."""
        blocks, batch, tgt_len = tgt_idx.shape
        ctx = self.embed(context) + self.pos(ctx_idx)  # (B, Kc, W), once for all P rows
        queries = self.mask_token + self.pos(tgt_idx)  # (P, B, Kt, W)
        # Row (p, b) = context b, then block p's queries: one copy into the (P*B, Kc+Kt, W) input.
        x = torch.cat([ctx.expand(blocks, -1, -1, -1), queries], dim=2).flatten(0, 1)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1](x, outputs_from=ctx.shape[1])  # only the target queries' outputs are used
        pred = self.out(self.norm(x))
        return pred.view(blocks, batch, tgt_len, -1)

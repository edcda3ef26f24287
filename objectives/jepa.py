"""I-JEPA latent prediction for text: predict, from the visible context, the EMA target encoder's
layer-normed latents of the clean tokens at the hidden target blocks.

The step names its parts: forward_target (no grad), forward_context, predict, distance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from common.spectra import rankme
from models import encode
from objectives.masking import MaskedBatch

if TYPE_CHECKING:
    from objectives.spec import ObjectiveModule

Distance = Callable[[Tensor, Tensor], Tensor]

DISTANCES: dict[str, Distance] = {
    "cosine": lambda pred, tgt: 1 - F.cosine_similarity(pred, tgt, dim=-1).mean(),  # the paper's
    "smooth_l1": F.smooth_l1_loss,
    "l2": F.mse_loss,
}


def row_positions(idx: Tensor) -> Tensor:
    """idx (..., B, K) -> (B, n*K): each row's positions, its n index blocks side by side."""
    batch, k = idx.shape[-2:]
    return idx.reshape(-1, batch, k).transpose(0, 1).reshape(batch, -1)


def split_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, n*K, D), laid out as row_positions(idx) -> (..., B, K, D), shaped as idx."""
    batch, k = idx.shape[-2:]
    return x.view(batch, -1, k, x.shape[-1]).transpose(0, 1).reshape(*idx.shape, x.shape[-1])


def flat_positions(idx: Tensor, length: int) -> Tensor:
    """idx (..., B, K) of positions in rows of `length` -> the same positions in the flattened (B*L) rows, 1-D."""
    offsets = torch.arange(0, idx.shape[-2] * length, length, device=idx.device).unsqueeze(-1)
    return (idx + offsets).flatten()


def gather_positions(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, L, D), idx (..., B, K) -> (..., B, K, D).

    One index_select of whole D-wide rows of x viewed as (B*L, D), straight into idx's layout: no expanded
    index per element (gather), no reordering copy; its gradient is one index_add of rows."""
    batch, length, width = x.shape
    return x.reshape(batch * length, width).index_select(0, flat_positions(idx, length)).view(*idx.shape, width)


@torch.no_grad()
def forward_target(module: ObjectiveModule, batch: MaskedBatch) -> Tensor:
    """Target latents (P, B, Kt, D): the EMA encoder on the clean tokens, read at the target blocks, layer-normed
    without affine (per position, so normalising after the read gives the same latents for fewer rows)."""
    hidden = encode(module.nets.target, batch.input_ids, batch.attention_mask)
    target = gather_positions(hidden, batch.tgt_idx)
    return F.layer_norm(target, target.shape[-1:])


def forward_context(module: ObjectiveModule, batch: MaskedBatch) -> Tensor:
    """Context latents (B, Kc, D): the student on the context tokens only, at their original positions."""
    tokens = batch.input_ids.gather(1, batch.ctx_idx)
    return encode(module.nets.encoder, tokens, None, position_ids=batch.ctx_idx)


def effective_rank(x: Tensor) -> Tensor:
    """RankMe: exp of the entropy of the normalised singular values of x (N, D). A collapse check.
    NaN when x holds NaN/inf (a diverged step), decided on the device without a sync."""
    x = x.float()
    finite = torch.isfinite(x).all()
    erank = rankme(torch.linalg.svdvals(torch.where(finite, x, torch.zeros_like(x))))
    return torch.where(finite, erank, torch.full_like(erank, float("nan")))


def jepa_term(module: ObjectiveModule, context: Tensor, batch: MaskedBatch, diagnostics: bool
              ) -> tuple[Tensor, dict[str, Tensor]]:
    target = forward_target(module, batch)
    pred = module.nets.predictor(context, batch.ctx_idx, batch.tgt_idx)
    loss = DISTANCES[module.cfg.jepa_distance](pred.float(), target.float())
    metrics = {"loss_jepa": loss.detach()}
    if diagnostics:
        metrics["target_std"] = target.float().std(dim=(0, 1, 2)).mean()
        metrics["pred_erank"] = effective_rank(pred.detach().flatten(0, 2))
    return loss, metrics


def jepa_objective(module: ObjectiveModule, batch: MaskedBatch, diagnostics: bool
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    loss, metrics = jepa_term(module, forward_context(module, batch), batch, diagnostics)
    return loss, {"loss": loss.detach(), **metrics, "lambda": loss.new_ones(())}

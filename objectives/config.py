"""The `masking` and `objective` sections of a run's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from common.config import check_unit_range, require

if TYPE_CHECKING:
    from models.config import ModelConfig


@dataclass(frozen=True)
class MaskingConfig:
    mlm_probability: float = 0.15  # of non-special, non-padding tokens
    mask_token_fraction: float = 0.8  # of the selected: replaced by [MASK]
    random_token_fraction: float = 0.1  # of the selected: replaced by a random token (the rest unchanged)
    enc_mask_scale: tuple[float, float] = (0.65, 0.85)  # context block, x the real length
    pred_mask_scale: tuple[float, float] = (0.10, 0.25)  # each target block, x the real length
    num_pred_masks: int = 2
    min_keep: int = 4  # fewest context tokens a sample may keep

    def __post_init__(self) -> None:
        require(0 < self.mlm_probability < 1, "mlm_probability", self.mlm_probability, "must lie in (0, 1)")
        for name in ("mask_token_fraction", "random_token_fraction"):
            require(0 <= getattr(self, name) <= 1, name, getattr(self, name), "must lie in [0, 1]")
        require(self.mask_token_fraction + self.random_token_fraction <= 1, "random_token_fraction",
                 self.random_token_fraction, "mask_token_fraction + random_token_fraction must be <= 1")
        check_unit_range("enc_mask_scale", self.enc_mask_scale)
        check_unit_range("pred_mask_scale", self.pred_mask_scale)
        require(self.num_pred_masks >= 1, "num_pred_masks", self.num_pred_masks, "must be >= 1")
        require(self.min_keep >= 1, "min_keep", self.min_keep, "must be >= 1")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "hybrid"  # a key of the registry objectives.OBJECTIVES (mlm | jepa | hybrid); harness.config checks it
    jepa_distance: Literal["cosine", "smooth_l1", "l2"] = "cosine"
    weighting: Literal["learned", "fixed", "uncertainty"] = "learned"
    lambda_init: float = 0.5  # λ weights L_JEPA; (1 - λ) weights L_MLM
    passes: Literal[1, 2] = 2
    ema_start: float = 0.996  # EMA momentum of the target encoder, linear start -> end over the run
    ema_end: float = 1.0

    def __post_init__(self) -> None:
        require(0 < self.lambda_init < 1, "lambda_init", self.lambda_init, "must lie in (0, 1)")
        for name in ("ema_start", "ema_end"):
            require(0 <= getattr(self, name) <= 1, name, getattr(self, name), "must lie in [0, 1]")


class _Batching(Protocol):
    @property
    def batch_size(self) -> int: ...


class _Sequences(Protocol):
    @property
    def seq_len(self) -> int: ...


class RunConfig(Protocol):
    """What objectives read of a run's config (harness.config.Config is one): the model, masking and objective
    sections, the per-worker batch size and the sequence length."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def masking(self) -> MaskingConfig: ...
    @property
    def objective(self) -> ObjectiveConfig: ...
    @property
    def optim(self) -> _Batching: ...
    @property
    def data(self) -> _Sequences: ...

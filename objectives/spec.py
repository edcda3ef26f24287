"""What an objective is: a spec in the registry (objectives.OBJECTIVES), and the module its loss receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from models import PretrainNets
    from objectives.config import ObjectiveConfig, RunConfig
    from objectives.flops import Matmuls, StepShape
    from objectives.masking import MaskedBatch, MaskPlan
    from objectives.weighting import LossWeighting


class ObjectiveModule(Protocol):
    """What a loss reads of the module it trains (objectives.PretrainModule is one)."""

    nets: PretrainNets
    cfg: ObjectiveConfig
    weighting: LossWeighting | None


Loss = Callable[["ObjectiveModule", "MaskedBatch", bool], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective: its loss `(module, batch, diagnostics) -> (loss, metrics)`, the masks it needs (which also
    decide the networks built), its model FLOPs, and whether it mixes two losses with objective.weighting."""

    name: str
    loss: Loss
    masks: Callable[[ObjectiveConfig], MaskPlan]
    matmuls: Callable[[RunConfig, StepShape], Matmuls]  # one step's GEMMs and attention FLOPs (objectives.flops)
    weighted: bool = False  # a LossWeighting (λ) from objective.weighting and objective.lambda_init

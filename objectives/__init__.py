"""Pre-training objectives as plain functions in a registry; the training loop only calls the registry.

    Objective = (module, batch, diagnostics) -> (loss, metrics)

`metrics` holds detached tensors (each loss term, λ, and with diagnostics=True the costlier collapse
checks); the harness reads them only at log steps, so the step itself never syncs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from models import PretrainNets
from objectives.hybrid import hybrid_objective
from objectives.jepa import jepa_objective
from objectives.masking import MaskedBatch, MaskPlan
from objectives.mlm import mlm_objective
from objectives.weighting import LossWeighting

if TYPE_CHECKING:
    from harness.config import Config

Objective = Callable[["PretrainModule", MaskedBatch, bool], tuple[Tensor, dict[str, Tensor]]]

OBJECTIVES: dict[str, Objective] = {
    "mlm": mlm_objective,
    "jepa": jepa_objective,
    "hybrid": hybrid_objective,
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; valid names: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def mask_plan(cfg: Config) -> MaskPlan:
    """Which masks the collator must draw for this objective."""
    name, passes = cfg.objective.name, cfg.objective.passes
    return MaskPlan(mlm=name in ("mlm", "hybrid"), jepa=name in ("jepa", "hybrid"),
                    hide_targets=name == "hybrid" and passes == 1)


class PretrainModule(nn.Module):
    """What the training loop (and DDP) wraps: the networks, the loss weighting, and the objective."""

    def __init__(self, cfg: Config):
        super().__init__()
        plan = mask_plan(cfg)
        self.cfg = cfg.objective
        self.objective = get_objective(cfg.objective.name)
        self.nets = PretrainNets(cfg.model, mlm=plan.mlm, jepa=plan.jepa)
        self.weighting = None
        if cfg.objective.name == "hybrid":
            self.weighting = LossWeighting(cfg.objective.weighting, cfg.objective.lambda_init)

    def forward(self, batch: MaskedBatch, diagnostics: bool = False) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Loss and metrics: each loss term, λ, the batch's mask statistics (and diagnostics if asked)."""
        loss, metrics = self.objective(self, batch, diagnostics)
        return loss, {**metrics, **batch.stats}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices; none on biases, norms and the loss-weighting parameters."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (decay if param.ndim >= 2 and not name.startswith("weighting.") else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

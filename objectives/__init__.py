"""Pre-training objectives as specs in a registry; the training loop only calls the registry.

    ObjectiveSpec.loss = (module, batch, diagnostics) -> (loss, metrics)

`metrics` holds detached tensors (each loss term, λ, and with diagnostics=True the costlier collapse
checks); the harness reads them only at log steps, so the step itself never syncs. A spec also says which
masks the objective needs (and so which networks are built), whether it mixes two losses with a learned or
fixed λ, and its model FLOPs. Adding an objective is one module with its loss and one `register_objective`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from models import PretrainNets
from objectives.flops import Matmuls, StepShape, expected_shape, hybrid_matmuls, jepa_matmuls, mlm_matmuls, total_flops
from objectives.hybrid import hybrid_objective
from objectives.jepa import jepa_objective
from objectives.masking import MaskedBatch, MaskPlan
from objectives.mlm import mlm_objective
from objectives.spec import ObjectiveSpec
from objectives.weighting import LossWeighting

if TYPE_CHECKING:
    from objectives.config import RunConfig

OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add `spec` to the registry (objective.name then accepts it); a name is registered once."""
    if spec.name in OBJECTIVES:
        raise ValueError(f"objective {spec.name!r} is already registered")
    OBJECTIVES[spec.name] = spec
    return spec


register_objective(ObjectiveSpec("mlm", mlm_objective, lambda o: MaskPlan(mlm=True, jepa=False), mlm_matmuls))
register_objective(ObjectiveSpec("jepa", jepa_objective, lambda o: MaskPlan(mlm=False, jepa=True), jepa_matmuls))
register_objective(ObjectiveSpec(
    "hybrid", hybrid_objective,
    # One pass: the student sees the JEPA targets as [MASK], so BERT masking skips them.
    lambda o: MaskPlan(mlm=True, jepa=True, hide_targets=o.passes == 1),
    hybrid_matmuls,
    weighted=True,
))


def get_objective(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; valid names: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def mask_plan(cfg: RunConfig) -> MaskPlan:
    """Which masks the collator must draw for this run's objective."""
    return get_objective(cfg.objective.name).masks(cfg.objective)


def step_matmuls(cfg: RunConfig, shape: StepShape | None = None) -> Matmuls:
    """The GEMMs of one training step on one worker, and the FLOPs of its attention matmuls; `shape`: a batch's
    exact sizes (objectives.flops.shape_of), else the config's expected ones."""
    return get_objective(cfg.objective.name).matmuls(cfg, shape or expected_shape(cfg, mask_plan(cfg).hide_targets))


def train_flops_per_step(cfg: RunConfig, shape: StepShape | None = None) -> float:
    """Model FLOPs of one training step on one worker (forward + backward, EMA target forward)."""
    return total_flops(step_matmuls(cfg, shape))


class PretrainModule(nn.Module):
    """What the training loop (and DDP) wraps: the networks, the loss weighting, and the objective."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        spec = get_objective(cfg.objective.name)
        plan = spec.masks(cfg.objective)
        self.cfg = cfg.objective
        self.objective = spec.loss
        self.nets = PretrainNets(cfg.model, mlm=plan.mlm, jepa=plan.jepa)
        self.weighting = LossWeighting(cfg.objective.weighting, cfg.objective.lambda_init) if spec.weighted else None

    def forward(self, batch: MaskedBatch, diagnostics: bool = False) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Loss and metrics: each loss term, λ, the batch's mask statistics (and diagnostics if asked)."""
        loss, metrics = self.objective(self, batch, diagnostics)
        return loss, {**metrics, **batch.stats}

    def network_parameters(self) -> list[nn.Parameter]:
        """The networks' trained parameters: everything but the loss weighting's (what gradient clipping sees)."""
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("weighting.")]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on matrices; none on biases, norms and the loss-weighting parameters."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (decay if param.ndim >= 2 and not name.startswith("weighting.") else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

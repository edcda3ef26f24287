"""Linear probes on frozen sentence vectors, one engine for every task and pooling.

Single-sentence tasks feed u to the head; pair tasks feed [u, v, |u - v|, u * v]. Features are
standardised with training statistics. The L2 strength and the number of epochs are chosen on a
held-out part of the TRAIN split (never on dev); the probe is then refitted on all of train with
that choice and scored on dev. Heads (and the attention pooler's query) start at zero, batches
are shuffled by a seeded generator: a run is a deterministic function of its inputs and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from eval.config import ProbeConfig
from eval.embed import TokenStates
from eval.pooling import AttentionPooler, pool_texts
from eval.scores import SCORES
from eval.tasks import TaskSpec

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def pair_features(u: Array, v: Array) -> Array:
    """The features of a sentence pair, [u, v, |u - v|, u * v] (numpy arrays or tensors, last axis)."""
    parts = [u, v, abs(u - v), u * v]
    return torch.cat(parts, dim=-1) if isinstance(u, torch.Tensor) else np.concatenate(parts, axis=-1)


@dataclass
class Split:
    """A task split for the probe: token states of its distinct texts and, per example, indices into them."""

    states: TokenStates
    a: np.ndarray
    b: np.ndarray | None  # second sentence of pair tasks
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class ProbeResult:
    dev_pred: np.ndarray
    weight_decay: float
    epochs: int
    pooler: AttentionPooler | None  # the trained pooler for "attention", else None


class _Inputs:
    """Model inputs of a split: pooled vectors for fixed poolings, padded token states for attention."""

    def __init__(self, split: Split, pooling: str) -> None:
        self.split = split
        self.vectors = None if pooling == "attention" else torch.from_numpy(pool_texts(split.states, pooling))

    def _sentences(self, text_idx: np.ndarray):
        return self.vectors[text_idx] if self.vectors is not None else self.split.states.padded(text_idx)

    def batch(self, idx: np.ndarray) -> tuple:
        b = None if self.split.b is None else self._sentences(self.split.b[idx])
        return self._sentences(self.split.a[idx]), b


class ProbeModel(nn.Module):
    def __init__(self, dim: int, n_out: int, pair: bool, pooler: AttentionPooler | None) -> None:
        super().__init__()
        self.pooler = pooler
        in_dim = 4 * dim if pair else dim
        self.head = nn.Linear(in_dim, n_out)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("shift", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.y_mean, self.y_std = 0.0, 1.0  # regression: targets are standardised with train statistics

    def features(self, a, b) -> torch.Tensor:
        u = self.pooler(*a) if self.pooler is not None else a
        if b is None:
            return u
        v = self.pooler(*b) if self.pooler is not None else b
        return pair_features(u, v)

    def forward(self, a, b) -> torch.Tensor:
        return self.head((self.features(a, b) - self.shift) / self.scale)


def fit_probe(spec: TaskSpec, pooling: str, train: Split, dev: Split, cfg: ProbeConfig) -> ProbeResult:
    """Choose L2 strength and epochs on held-out train data, refit on all of train, predict dev."""
    inputs = _Inputs(train, pooling)
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    n_val = max(1, int(round(cfg.val_fraction * len(train))))
    val_idx, fit_idx = order[:n_val], order[n_val:]
    best = (-np.inf, cfg.weight_decays[0], 1)
    for wd in cfg.weight_decays:
        _, history = _train(spec, pooling, inputs, fit_idx, wd, cfg.max_epochs, cfg, val_idx)
        epoch = int(np.argmax(history))
        if history[epoch] > best[0]:
            best = (history[epoch], wd, epoch + 1)
    _, wd, epochs = best
    model, _ = _train(spec, pooling, inputs, np.arange(len(train)), wd, epochs, cfg)
    return ProbeResult(_predict(model, _Inputs(dev, pooling), np.arange(len(dev))), wd, epochs, model.pooler)


def _train(
    spec: TaskSpec,
    pooling: str,
    inputs: _Inputs,
    idx: np.ndarray,
    wd: float,
    epochs: int,
    cfg: ProbeConfig,
    val_idx: np.ndarray | None = None,
) -> tuple[ProbeModel, list[float]]:
    """Adam on loss + wd * ||W||^2; with val_idx, returns the held-out score after every epoch."""
    y = inputs.split.y
    pooler = AttentionPooler(inputs.split.states.dim) if pooling == "attention" else None
    model = ProbeModel(inputs.split.states.dim, spec.num_labels, inputs.split.b is not None, pooler)
    _standardise(model, inputs, idx)
    if spec.regression:  # regress standardised scores; predictions are mapped back
        model.y_mean, model.y_std = float(y[idx].mean()), float(y[idx].std() or 1.0)
        target = torch.tensor((y - model.y_mean) / model.y_std, dtype=torch.float32)
    else:
        target = torch.tensor(y, dtype=torch.long)
    groups = [{"params": model.head.parameters(), "lr": cfg.lr}]
    if pooler is not None:
        groups.append({"params": pooler.parameters(), "lr": cfg.pooler_lr})
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    for _ in range(epochs):
        for perm in torch.randperm(len(idx), generator=gen).split(cfg.batch_size):
            batch = idx[perm.numpy()]
            out = model(*inputs.batch(batch))
            if spec.regression:
                loss = nn.functional.mse_loss(out[:, 0], target[batch])
            else:
                loss = nn.functional.cross_entropy(out, target[batch])
            loss = loss + wd * model.head.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val_idx is not None:
            history.append(float(SCORES[spec.metrics[0]](y[val_idx], _predict(model, inputs, val_idx))))
            if len(history) - 1 - int(np.argmax(history)) >= cfg.patience:
                break
    return model, history


@torch.no_grad()
def _standardise(model: ProbeModel, inputs: _Inputs, idx: np.ndarray, chunk: int = 1024) -> None:
    feats = torch.cat([model.features(*inputs.batch(idx[s : s + chunk])) for s in range(0, len(idx), chunk)])
    model.shift.copy_(feats.mean(0))
    model.scale.copy_(feats.std(0).clamp_min(1e-6))


@torch.no_grad()
def _predict(model: ProbeModel, inputs: _Inputs, idx: np.ndarray, chunk: int = 1024) -> np.ndarray:
    out = torch.cat([model(*inputs.batch(idx[s : s + chunk])) for s in range(0, len(idx), chunk)])
    if out.shape[1] == 1:
        return out[:, 0].numpy().astype(np.float64) * model.y_std + model.y_mean
    return out.argmax(1).numpy()

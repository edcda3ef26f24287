"""Linear probes on frozen sentence vectors, one engine for every task and pooling.

Single-sentence tasks feed u to the head; pair tasks feed [u, v, |u - v|, u * v]. Features are
standardised with training statistics. The L2 strength and the number of epochs are chosen on a
held-out part of the TRAIN split (never on dev); the probe is then refitted on all of train with
that choice and scored on dev. Heads (and the attention pooler's query) start at zero, batches
are shuffled by a seeded generator: a run is a deterministic function of its inputs and seed.
The chosen probe's score on that held-out part of train is kept (`ProbeResult.heldout_*`): the suite
reports it as the `select` family, the only probe number a study may select on.

The reference protocol's probes (studies/paper/REFERENCE.md §2.6, §3) are here too, both SELECTING ON DEV:
`fit_reference_probe` (the finetune_*.py heads, best dev epoch) and `dev_cv_probe` (cross-validation on dev).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torch import nn

from eval.config import ProbeConfig, ReferenceSwitches
from eval.embed import TokenStates
from eval.pooling import AttentionPooler, pair_features, pool_texts
from eval.scores import SCORES
from eval.tasks import TaskSpec


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
    heldout_idx: np.ndarray  # the held-out part of TRAIN the choice was made on (indices into train)
    heldout_pred: np.ndarray  # the chosen (L2, epochs) probe's predictions there, fitted on the rest of train


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
    best, fallback = (-np.inf, cfg.weight_decays[0], 1, None), None
    for wd in cfg.weight_decays:
        _, history, val_preds = _train(spec, pooling, inputs, fit_idx, wd, cfg.max_epochs, cfg, val_idx)
        fallback = val_preds[0] if fallback is None else fallback  # the default choice: first L2, one epoch
        epoch = int(np.argmax(history))
        if history[epoch] > best[0]:
            best = (history[epoch], wd, epoch + 1, val_preds[epoch])
    _, wd, epochs, heldout_pred = best
    heldout_pred = fallback if heldout_pred is None else heldout_pred  # no finite held-out score at all
    model, _, _ = _train(spec, pooling, inputs, np.arange(len(train)), wd, epochs, cfg)
    dev_pred = _predict(model, _Inputs(dev, pooling), np.arange(len(dev)))
    return ProbeResult(dev_pred, wd, epochs, model.pooler, val_idx, heldout_pred)


def _train(
    spec: TaskSpec,
    pooling: str,
    inputs: _Inputs,
    idx: np.ndarray,
    wd: float,
    epochs: int,
    cfg: ProbeConfig,
    val_idx: np.ndarray | None = None,
) -> tuple[ProbeModel, list[float], list[np.ndarray]]:
    """Adam on loss + wd * ||W||^2; with val_idx, returns the held-out score and predictions after every epoch."""
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
    val_preds: list[np.ndarray] = []
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
            val_preds.append(_predict(model, inputs, val_idx))
            history.append(float(SCORES[spec.metrics[0]](y[val_idx], val_preds[-1])))
            if len(history) - 1 - int(np.argmax(history)) >= cfg.patience:
                break
    return model, history, val_preds


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


# ---------------------------------------------------------------- the reference code's probes (select on dev)


@dataclass(frozen=True)
class ReferenceProbeSettings:
    """One finetune_*.py run as logged (studies/paper/REFERENCE.md §3): AdamW(lr, weight_decay=0.01) on
    LayerNorm -> Dropout -> Linear, batch size, epochs, the head's dropout probability."""

    lr: float
    batch_size: int
    epochs: int
    dropout: float
    source: str


REFERENCE_PROBES: dict[str, ReferenceProbeSettings] = {
    "sst2": ReferenceProbeSettings(1e-3, 32, 90, 0.2, "finetune_sentiment.py:linearprobe_sentiment, as logged "
                                   "(sentiment_linearprobe_log_20260313_160119: lr 1e-3, batch 32, 90 epochs)"),
    "mrpc": ReferenceProbeSettings(1e-3, 32, 90, 0.2, "finetune_paraphrase.py:finetune_paraphrase, as logged "
                                   "(paraphrase_log_20260313_210209: lr 1e-3, batch 32, 90 epochs)"),
    "mnli": ReferenceProbeSettings(1e-3, 128, 15, 0.2, "finetune_mnli.py:finetune_mnli, as logged "
                                   "(mnli_log_20260315_204024: lr 1e-3, batch 128, 15 epochs)"),
    "stsb": ReferenceProbeSettings(1e-3, 128, 10, 0.1, "finetune_stsb.py:finetune_stsb, as logged "
                                   "(stsb_log_20260315_230142: lr 1e-3, batch 128, 10 epochs)"),
    "cola": ReferenceProbeSettings(2e-5, 32, 15, 0.2, "finetune_cola.py:finetune_cola, its code defaults (no CoLA "
                                   "output is published: lr 2e-5, batch 32, 15 epochs), class-weighted loss"),
}


class ReferenceHead(nn.Module):
    """The finetune_*.py heads on pooled vectors: LayerNorm (affine) -> Dropout -> Linear; pairs: LN(u), LN(v) ->
    [u, v, |u-v|, u*v] -> Dropout -> Linear (finetune_paraphrase.py, finetune_mnli.py:SentencePairModel); STS-B with
    `cosine`: scale * cos(dropout(LN(u)), dropout(LN(v))) + bias, scale = bias = 2.5 at start
    (finetune_stsb.py:SentenceSimilarityModel)."""

    def __init__(self, dim: int, n_out: int, pair: bool, cosine: bool, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.cosine = cosine
        if cosine:
            self.scale = nn.Parameter(torch.tensor(2.5))
            self.bias = nn.Parameter(torch.tensor(2.5))
        else:
            self.classifier = nn.Linear(4 * dim if pair else dim, n_out)

    def forward(self, u: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        u = self.norm(u)
        if self.cosine:
            u, v = self.dropout(u), self.dropout(self.norm(v))
            return self.scale * torch.cosine_similarity(u, v, dim=-1) + self.bias
        feats = u if v is None else pair_features(u, self.norm(v))
        out = self.classifier(self.dropout(feats))
        return out[:, 0] if out.shape[1] == 1 else out


@dataclass
class ReferenceProbeResult:
    dev_pred: np.ndarray  # at the reported epoch
    epoch: int  # the reported epoch (1-based): the best on dev, or the last
    epochs: int  # epochs trained
    history: list[float]  # dev main metric after every epoch


def fit_reference_probe(
    spec: TaskSpec,
    train: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    settings: ReferenceProbeSettings,
    switches: ReferenceSwitches,
    seed: int = 0,
    max_epochs: int | None = None,
) -> ReferenceProbeResult:
    """The reference GLUE probe (finetune_*.py) on pooled vectors (u, v or None, y) of train and dev: trained on
    train, scored on dev after EVERY epoch; reports the best dev epoch (`probe_best_epoch_on_dev`: the epoch count is
    chosen on dev) or the last. Dropout is on in epoch 1 only (`probe_dropout_epoch1`). CoLA weights its classes by
    n / (2 n_c). Seeded initialisation and shuffling (unseeded in the reference)."""
    threads = torch.get_num_threads()
    # A head on pooled vectors is thousands of tiny steps: one thread (with two, a loaded 2-core machine spent 48 s
    # in thread synchronisation on a run one thread does in 0.6 s).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # seeded head initialisation and dropout masks, global RNG untouched
            torch.manual_seed(seed)
            return _fit_reference_probe(spec, train, dev, settings, switches, seed, max_epochs)
    finally:
        torch.set_num_threads(threads)


def _fit_reference_probe(
    spec: TaskSpec,
    train: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    settings: ReferenceProbeSettings,
    switches: ReferenceSwitches,
    seed: int,
    max_epochs: int | None,
) -> ReferenceProbeResult:
    u_tr, v_tr, y_tr = (None if a is None else torch.from_numpy(np.array(a)) for a in train)
    u_dev, v_dev, y_dev = dev
    cosine = spec.regression and switches.stsb_cosine and v_tr is not None
    head = ReferenceHead(u_tr.shape[1], spec.num_labels, v_tr is not None, cosine, settings.dropout)
    if spec.regression:
        loss_fn = nn.MSELoss()
        target = y_tr.float()
    else:
        weight = None
        if spec.name == "cola":  # finetune_cola.py: weight of class c = n_total / (n_classes * n_c)
            counts = torch.bincount(y_tr.long(), minlength=spec.num_labels).float()
            weight = len(y_tr) / (spec.num_labels * counts.clamp_min(1))
        loss_fn = nn.CrossEntropyLoss(weight=weight)
        target = y_tr.long()
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    epochs = settings.epochs if max_epochs is None else min(settings.epochs, max_epochs)
    metric = SCORES[spec.metrics[0]]
    history: list[float] = []
    best = (-np.inf, 0, None)
    u_dev_t, v_dev_t = torch.from_numpy(np.array(u_dev)), None if v_dev is None else torch.from_numpy(np.array(v_dev))
    for epoch in range(epochs):
        head.train()
        if epoch > 0 and switches.probe_dropout_epoch1:
            head.dropout.eval()  # the loops re-enable only norm and classifier after the first validation
        for perm in torch.randperm(len(target), generator=gen).split(settings.batch_size):
            out = head(u_tr[perm], None if v_tr is None else v_tr[perm])
            loss = loss_fn(out, target[perm])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            out = head(u_dev_t, v_dev_t)
        pred = out.double().numpy() if spec.regression else out.argmax(1).numpy()
        history.append(float(metric(y_dev, pred)))
        if history[-1] > best[0] or best[2] is None:
            best = (history[-1], epoch + 1, pred)
        if not switches.probe_best_epoch_on_dev:
            best = (history[-1], epoch + 1, pred)
    return ReferenceProbeResult(best[2], best[1], epochs, history)


@dataclass
class DevCVResult:
    pred: np.ndarray  # out-of-fold predictions of every dev row
    fold_acc: np.ndarray | None  # classification: accuracy of each fold (the reference reports their mean)


def dev_cv_probe(x: np.ndarray, y: np.ndarray, regression: bool, seed: int = 0) -> DevCVResult:
    """The reference "semantic" probe (representation_analysis.py:semantic_probe), trained and scored on the dev
    sample itself: StandardScaler fitted on all rows, 5 unshuffled folds; classification LogisticRegression(saga,
    C=1, max_iter=500) (seeded here), regression Ridge(alpha=1). One fit per fold gives both the fold accuracies and
    the out-of-fold predictions (the reference refits for each number; with a fixed seed the fits are identical)."""
    xs = StandardScaler().fit_transform(x)
    pred = np.zeros(len(y), dtype=float if regression else np.asarray(y).dtype)
    folds = (KFold(5) if regression else StratifiedKFold(5)).split(xs, y)
    fold_acc = []
    for fit, test in folds:
        if regression:
            pred[test] = Ridge(alpha=1.0).fit(xs[fit], y[fit]).predict(xs[test])
            continue
        clf = LogisticRegression(C=1.0, solver="saga", max_iter=500, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xs[fit], y[fit])
        pred[test] = clf.predict(xs[test])
        fold_acc.append(float((pred[test] == y[test]).mean()))
    return DevCVResult(pred, None if regression else np.array(fold_acc))

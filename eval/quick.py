"""The quick probe: a cheap score of an encoder *during* pre-training, comparable across objectives and λ.

Mean-pooled sentence vectors (eval.pooling.mean) of a few GLUE tasks (default SST-2 and STS-B; pairs get the
probes' features [u, v, |u - v|, u * v]), features standardised on the fitting rows, a closed-form ridge fit with
a fixed penalty, scored by the task's main metric (SST-2 accuracy, STS-B Spearman) on a seeded HELD-OUT split of the
task's TRAIN split, disjoint from the fitting rows. Dev is never read: ASHA selects on this score, and selection
never touches dev. Metrics `select/quick/<task>` and their mean `select/quick_score`. It depends on the encoder
only, never on λ or the loss, so ASHA can rank trials of different λ and objectives by it.

`build_quick_probe` runs once per study on the driver (tokenised ids, small and picklable);
`quick_probe` runs on rank 0 inside the training loop, with the live encoder, in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.embed import padded_batches
from eval.pooling import mean, pair_features
from eval.scores import SCORES

RIDGE = 1.0  # penalty on standardised features, relative to the number of train examples


@dataclass
class QuickTask:
    name: str
    metric: str  # the task's main metric
    regression: bool
    num_labels: int
    train: dict[str, list]  # "a", "b" (pairs only): token id lists; "y": labels. Rows of the TRAIN split.
    heldout: dict[str, list]  # the same for the held-out rows of the TRAIN split the probe is scored on


def heldout_split(n_rows: int, n_train: int, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (fit, held-out) row indices of a train split of n_rows, drawn by a seeded permutation, in their
    original order. When the split is smaller than n_train + n_heldout both shrink in proportion."""
    total = min(n_rows, n_train + n_heldout)
    n_out = max(1, round(total * n_heldout / (n_train + n_heldout)))
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_out:total]), np.sort(order[:n_out])


def build_quick_probe(tasks: tuple[str, ...], glue_dir: Path | None, tokenizer, n_train: int, n_heldout: int,
                      max_len: int, seed: int = 0) -> list[QuickTask]:
    """Tokenise, for each task, n_train seeded rows of its TRAIN split to fit on and n_heldout other seeded rows of
    the same TRAIN split to score on (glue_dir=None: the Hub copy). Dev is never read."""
    from eval.tasks import load_task  # pandas: the driver reads the tasks; the workers that score need none of it

    out = []
    for name in tasks:
        data = load_task(name, glue_dir)
        spec = data.spec
        fit, heldout = heldout_split(len(data.train), n_train, n_heldout, seed)
        splits = {}
        for split, rows in (("train", fit), ("heldout", heldout)):
            df = data.train.iloc[rows]
            ids = {"a": tokenizer(df["text_a"].tolist(), truncation=True, max_length=max_len)["input_ids"]}
            if spec.is_pair:
                ids["b"] = tokenizer(df["text_b"].tolist(), truncation=True, max_length=max_len)["input_ids"]
            ids["y"] = df["label"].tolist()
            splits[split] = ids
        out.append(QuickTask(name, spec.metrics[0], spec.regression, spec.num_labels, splits["train"],
                             splits["heldout"]))
    return out


@torch.no_grad()
def mean_pooled(encoder: torch.nn.Module, sentences: list[list[int]], device: torch.device,
                batch_size: int = 128) -> np.ndarray:
    """Mean over the real tokens of the last hidden states; batches of similar length, original order back."""
    vectors = np.empty((len(sentences), encoder.config.hidden_size), dtype=np.float32)
    for idx, ids, mask in padded_batches(sentences, batch_size):
        ids, mask = ids.to(device), mask.to(device)
        hidden = encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        vectors[idx] = mean(hidden, mask).cpu().numpy()
    return vectors


def _features(split: dict[str, list], encoder: torch.nn.Module, device: torch.device) -> np.ndarray:
    u = mean_pooled(encoder, split["a"], device)
    return u if "b" not in split else pair_features(u, mean_pooled(encoder, split["b"], device))


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    gram = x.T @ x + RIDGE * len(x) * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ y)


def score_task(task: QuickTask, encoder: torch.nn.Module, device: torch.device) -> float:
    """Fit the ridge on the task's fitting rows, score it on its held-out TRAIN rows."""
    x_train = _features(task.train, encoder, device).astype(np.float64)
    x_out = _features(task.heldout, encoder, device).astype(np.float64)
    shift, scale = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_out = (x_train - shift) / scale, (x_out - shift) / scale
    y_train, y_out = np.asarray(task.train["y"]), np.asarray(task.heldout["y"])
    if task.regression:
        w = _ridge(x_train, y_train - y_train.mean())
        pred = x_out @ w
    else:
        onehot = np.eye(task.num_labels)[y_train.astype(int)]
        w = _ridge(x_train, onehot - onehot.mean(0))
        pred = (x_out @ w).argmax(1)
    return float(SCORES[task.metric](y_out, pred))


def quick_probe(encoder: torch.nn.Module, tasks: list[QuickTask], device: torch.device) -> dict[str, float]:
    """{"select/quick/<task>": main metric on held-out TRAIN rows, ..., "select/quick_score": their mean};
    keeps the encoder's mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        scores = {f"select/quick/{t.name}": score_task(t, encoder, device) for t in tasks}
    finally:
        encoder.train(was_training)
    return {**scores, "select/quick_score": float(np.mean(list(scores.values())))}

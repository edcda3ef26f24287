"""Geometry of a cloud of N sentence embeddings x (N, d).

Every metric accepts bootstrap weights `w`: None (each point once), (N,) or (B, N) multiplicities
(a resample drawn with replacement is the count of each original point in it). With (B, N) the
result is (B,) values, one per resample. Pairwise metrics average over pairs of distinct original
points, pair (i, j) weighted w_i * w_j, so a duplicated point never pairs with itself.

Definitions (x_hat = x / ||x||):
- uniformity: log mean_{i != j} exp(-t ||x_hat_i - x_hat_j||^2), t = 2 (Wang & Isola 2020);
  "centred" subtracts the cloud mean (of the full sample) before normalising.
- alignment: mean ||x_hat - y_hat||^2 (alpha = 2) over positive pairs (x, y).
- spectrum: eigenvalues of the covariance of x (centred); RankMe uses singular values of raw x.
- effective rank (RankMe, Garrido et al. 2023): exp(entropy of singular values / their sum), common.spectra.rankme.
- spectral entropy: entropy of covariance eigenvalues / their sum, divided by log d (0..1).
- stable rank: sum of covariance eigenvalues / the largest one.
- alpha-ReQ (Agrawal et al. 2022): least-squares slope alpha of log lambda_i = c - alpha log i,
  with its fit R^2, over the eigenvalues above 1e-10 of the largest.
- IsoScore (Rudman et al. 2022): from covariance eigenvalues, as in the IsoScore package.
- mean cosine: mean_{i != j} cos(x_i, x_j).
- class distance ratio: mean Euclidean distance of same-class pairs / that of different-class pairs.

The reference protocol's variants (studies/paper/REFERENCE.md §2.3-2.7, representation_analysis.py) sit at the
end: `alignment_pow4`, `reference_spectral_metrics` (Roy-Vetrov effective rank of the centred matrix, spectral
entropy / log min(N, d), stable rank, rank_90), `reference_lexical_targets` and `reference_token_probe`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from common.spectra import rankme


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def pair_mean(m: np.ndarray, w: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of m[i, j] over pairs i != j (restricted to mask), pair weight w_i * w_j."""
    w2 = np.ones((1, len(m))) if w is None else np.atleast_2d(w).astype(float)
    sel = np.ones_like(m) if mask is None else mask.astype(float)
    m = m * sel

    def offdiag_sum(a: np.ndarray) -> np.ndarray:
        return ((w2 @ a) * w2).sum(1) - (w2**2 * np.diag(a)).sum(1)

    out = offdiag_sum(m) / offdiag_sum(sel)
    return out if w is not None and np.ndim(w) == 2 else out[0]


def sq_dists(x_hat: np.ndarray) -> np.ndarray:
    """Squared distances of unit vectors: 2 - 2 cos."""
    return np.clip(2.0 - 2.0 * x_hat @ x_hat.T, 0.0, None)


def uniformity(x: np.ndarray, t: float = 2.0, centered: bool = False, w: np.ndarray | None = None):
    x_hat = normalize(x - x.mean(0) if centered else x)
    return np.log(pair_mean(np.exp(-t * sq_dists(x_hat)), w))


def alignment(u: np.ndarray, v: np.ndarray, w: np.ndarray | None = None):
    """Mean ||u_hat - v_hat||^2 over positive pairs (u_i, v_i)."""
    d = ((normalize(u) - normalize(v)) ** 2).sum(-1)
    w = np.ones(len(u)) if w is None else w
    return (w * d).sum(-1) / w.sum(-1)


def alignment_same_label(x: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None):
    """Alignment with every same-label pair (i != j) as a positive pair."""
    return pair_mean(sq_dists(normalize(x)), w, labels[:, None] == labels[None, :])


def mean_cosine(x: np.ndarray, w: np.ndarray | None = None):
    x_hat = normalize(x)
    return pair_mean(x_hat @ x_hat.T, w)


def class_distance_ratio(x: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None):
    sq = (x * x).sum(1)
    dist = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0, None))
    same = labels[:, None] == labels[None, :]
    return pair_mean(dist, w, same) / pair_mean(dist, w, ~same)


def spectrum(
    x: np.ndarray, w: np.ndarray | None = None, centered: bool = True, chunk: int = 16
) -> np.ndarray:
    """Descending eigenvalues of the (weighted) covariance, or of x^T x when not centred."""
    eigs = spectra(x, w, chunk, centered=centered, raw=not centered)
    return eigs[0] if centered else eigs[1]


def spectra(
    x: np.ndarray, w: np.ndarray | None = None, chunk: int = 16, centered: bool = True, raw: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(covariance eigenvalues, eigenvalues of x^T x), descending, from ONE weighted gram per resample; either may be
    skipped (None). With (B, N) weights each is (B, d)."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    wt = torch.ones(1, len(x), dtype=torch.float64) if w is None else torch.from_numpy(np.atleast_2d(w) * 1.0)
    cov, unc = [], []
    for ws in wt.split(chunk):
        gram = (xt.T.unsqueeze(0) * ws.unsqueeze(1)) @ xt  # (b, d, d) = x^T diag(w) x
        if raw:
            unc.append(torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0.0))
        if centered:
            s = ws.sum(1)[:, None, None]
            mu = (ws @ xt).unsqueeze(2) / s  # (b, d, 1)
            cov.append(torch.linalg.eigvalsh((gram - s * mu @ mu.transpose(1, 2)) / (s - 1)).flip(-1).clamp_min(0.0))
    one = w is None or np.ndim(w) == 1
    out = tuple(torch.cat(e).numpy() if e else None for e in (cov, unc))
    return tuple(e[0] if e is not None and one else e for e in out)  # type: ignore[return-value]


def _entropy(p: np.ndarray) -> np.ndarray:
    p = p / p.sum(-1, keepdims=True)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1)


def spectral_entropy(eigs: np.ndarray) -> np.ndarray:
    return _entropy(eigs) / np.log(eigs.shape[-1])


def stable_rank(eigs: np.ndarray) -> np.ndarray:
    return eigs.sum(-1) / eigs.max(-1)


def alpha_req(eigs: np.ndarray) -> tuple[float, float]:
    """(alpha, R^2) of the log-log least-squares fit of one spectrum; NaN below 3 eigenvalues."""
    lam = eigs[eigs > eigs.max() * 1e-10]
    if len(lam) < 3:
        return float("nan"), float("nan")
    log_i, log_lam = np.log(np.arange(1, len(lam) + 1)), np.log(lam)
    slope, intercept = np.polyfit(log_i, log_lam, 1)
    resid = log_lam - (slope * log_i + intercept)
    r2 = 1.0 - (resid**2).sum() / ((log_lam - log_lam.mean()) ** 2).sum()
    return float(-slope), float(r2)


def isoscore(eigs: np.ndarray) -> np.ndarray:
    """IsoScore from the d covariance eigenvalues (1 = isotropic, ~0 = one direction)."""
    n = eigs.shape[-1]
    normed = eigs * np.sqrt(n) / np.linalg.norm(eigs, axis=-1, keepdims=True)
    defect = np.linalg.norm(normed - 1.0, axis=-1) / np.sqrt(2 * (n - np.sqrt(n)))
    return ((n - defect**2 * (n - np.sqrt(n))) ** 2 - n) / (n * (n - 1))


def spectral_metrics(x: np.ndarray, w: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every spectrum-based metric, computing each spectrum once (per bootstrap resample)."""
    eigs, raw = spectra(x, w)
    singular = np.sqrt(raw)
    fits = np.array([alpha_req(e) for e in np.atleast_2d(eigs)])
    batched = eigs.ndim == 2
    return {
        "effective_rank": rankme(torch.from_numpy(singular)).numpy()[()],  # float64 in and out
        "spectral_entropy": spectral_entropy(eigs),
        "stable_rank": stable_rank(eigs),
        "alpha_req": fits[:, 0] if batched else fits[0, 0],
        "alpha_req_r2": fits[:, 1] if batched else fits[0, 1],
        "isoscore": isoscore(eigs),
    }


def lexical_targets(token_ids: list[np.ndarray], special_ids: set[int]) -> np.ndarray:
    """Each sentence's most frequent non-special token id (ties: the earliest); -1 if there is none."""
    out = np.full(len(token_ids), -1, dtype=np.int64)
    for i, ids in enumerate(token_ids):
        ids = [t for t in ids.tolist() if t not in special_ids]
        if ids:
            out[i] = max(dict.fromkeys(ids), key=ids.count)  # dict keeps first-occurrence order
    return out


def lexical_probe(x: np.ndarray, targets: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per test sentence: (probe correct, majority baseline correct) on a seeded 50/50 split.

    A linear one-vs-rest ridge classifier (alpha = 1, standardised inputs; closed form, so cheap
    with hundreds of classes) learns the target token on one half; the baseline predicts the most
    frequent target of that half. Targets unseen in the first half count as errors.
    """
    order = np.random.default_rng(seed).permutation(len(x))
    fit, test = order[: len(x) // 2], order[len(x) // 2 :]
    classes, counts = np.unique(targets[fit], return_counts=True)
    majority = classes[np.argmax(counts)]
    if len(classes) < 2:
        pred = np.full(len(test), majority)
    else:
        scaler = StandardScaler().fit(x[fit])
        clf = RidgeClassifier(alpha=1.0).fit(scaler.transform(x[fit]), targets[fit])
        pred = clf.predict(scaler.transform(x[test]))
    return pred == targets[test], np.asarray(targets[test] == majority)


# ---------------------------------------------------------------- the reference code's variants


def score_bins(scores: np.ndarray) -> np.ndarray:
    """STS-B scores in 5 classes, np.digitize(score, [1, 2, 3, 4]) (representation_analysis.py:run_analysis)."""
    return np.digitize(scores, bins=[1, 2, 3, 4]).astype(int)


def alignment_pow4(x: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None):
    """The reference alignment (representation_analysis.py:alignment_uniformity, alpha = 2): per label class, the mean
    of ||x_hat_i - x_hat_j||^4 (the squared distance squared) over its pairs i < j; then the unweighted mean over the
    classes with at least two members (a resample's class without two distinct points is skipped)."""
    x_hat = normalize(np.asarray(x, dtype=np.float64))
    per_class = []
    for c in np.unique(labels):
        m = labels == c
        if m.sum() < 2:
            continue
        xc = x_hat[m]
        wc = None if w is None else np.atleast_2d(w)[:, m]
        with np.errstate(invalid="ignore", divide="ignore"):
            val = pair_mean(sq_dists(xc) ** 2, wc)
        per_class.append(np.atleast_1d(val))
    if not per_class:
        return float("nan") if w is None or np.ndim(w) == 1 else np.full(len(w), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: no class with a pair in that resample
        out = np.nanmean(np.stack(per_class), axis=0)
    return float(out[0]) if w is None or np.ndim(w) == 1 else out


def _entropy_filtered(p: np.ndarray) -> np.ndarray:
    """-sum p log p over the entries p > 1e-12 (the reference's filter)."""
    keep = p > 1e-12
    return -(np.where(keep, p * np.log(np.where(keep, p, 1.0)), 0.0)).sum(-1)


def reference_spectral_metrics(
    x: np.ndarray, w: np.ndarray | None = None, erank_centered: bool = True, entropy_min_nd: bool = True
) -> dict[str, np.ndarray]:
    """The reference's spectrum numbers (representation_analysis.py:compute_eigenspectrum, effective_rank), from the
    singular values S of the centred N x d matrix:
    - effective_rank: exp(entropy of S / sum S), entries p <= 1e-12 dropped (Roy & Vetrov; RankMe on the raw matrix
      when erank_centered is off);
    - spectral_entropy: entropy of S^2 / sum S^2 divided by log(min(N, d)) (log d when entropy_min_nd is off);
    - stable_rank: sum S^2 / S_0^2; rank_90: the number of components that reach 90% of the variance.
    Without weights S comes from an SVD, as in the reference; with (B, N) resample weights, from the weighted gram."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if w is None:
        s_c = np.linalg.svd(x - x.mean(0, keepdims=True), compute_uv=False)[None]
        s_raw = None if erank_centered else np.linalg.svd(x, compute_uv=False)[None]
    else:
        eig_c, eig_raw = spectra(x, np.atleast_2d(w), raw=not erank_centered)
        s_c = np.sqrt(eig_c * (np.atleast_2d(w).sum(1, keepdims=True) - 1))  # covariance -> S^2 scale
        s_raw = None if eig_raw is None else np.sqrt(eig_raw)
    s_for_erank = s_c if erank_centered else s_raw
    p = s_for_erank / (s_for_erank.sum(-1, keepdims=True) + 1e-12)
    erank = np.exp(_entropy_filtered(p))
    eig = s_c**2
    total = eig.sum(-1, keepdims=True)
    q = eig / (total + 1e-12)
    q = q / (q.sum(-1, keepdims=True) + 1e-12)
    k = min(n, d) if entropy_min_nd else d
    entropy = _entropy_filtered(q) / np.log(k + 1e-12)
    stable = eig.sum(-1) / (eig[:, 0] + 1e-12)
    cum = np.cumsum(eig, -1) / (total + 1e-12)
    rank_90 = np.array([np.searchsorted(c, 0.90) + 1 for c in cum], dtype=float)
    out = {"effective_rank": erank, "spectral_entropy": entropy, "stable_rank": stable, "rank_90": rank_90}
    one = w is None or np.ndim(w) == 1
    return {k: (float(v[0]) if one else v) for k, v in out.items()}


def reference_lexical_targets(token_ids: list[list[int]], special_ids: set[int]) -> np.ndarray:
    """The reference token-probe target of each text (representation_analysis.py:token_probe): the most frequent
    non-special token id of the UNTRUNCATED text, ties to the SMALLEST id (np.bincount(ids).argmax()), 0 if none."""
    out = np.zeros(len(token_ids), dtype=np.int64)
    for i, ids in enumerate(token_ids):
        ids = [t for t in ids if t not in special_ids]
        if ids:
            out[i] = int(np.bincount(ids).argmax())
    return out


def reference_token_probe(x: np.ndarray, targets: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The reference token probe (representation_analysis.py:token_probe): rows whose target class has fewer than 5
    members dropped; StandardScaler fitted on ALL kept rows; LogisticRegression(saga, C=1, max_iter=500) (seeded here,
    unseeded there) scored by 3-fold UNSHUFFLED stratified cross-validation.

    Returns {"fold_acc": (3,) fold accuracies (the reference reports their mean and std), "fold_majority": the same
    for the majority target of the fitting folds (a baseline the reference does not report), "correct" and
    "majority_correct": out-of-fold correctness of each kept row, "kept": (N,) bool}; empty arrays when fewer than
    two classes remain."""
    classes, counts = np.unique(targets, return_counts=True)
    kept = np.isin(targets, classes[counts >= 5])
    xs, ys = x[kept], targets[kept]
    empty = {"fold_acc": np.array([]), "fold_majority": np.array([]), "correct": np.array([]),
             "majority_correct": np.array([]), "kept": kept}
    if len(np.unique(ys)) < 2:
        return empty
    xs = StandardScaler().fit_transform(xs)
    correct, majority = np.zeros(len(ys), bool), np.zeros(len(ys), bool)
    fold_acc, fold_majority = [], []
    for fit, test in StratifiedKFold(n_splits=3, shuffle=False).split(xs, ys):
        clf = LogisticRegression(C=1.0, solver="saga", max_iter=500, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the reference silences them all
            clf.fit(xs[fit], ys[fit])
        correct[test] = clf.predict(xs[test]) == ys[test]
        values, counts_fit = np.unique(ys[fit], return_counts=True)
        majority[test] = ys[test] == values[np.argmax(counts_fit)]
        fold_acc.append(correct[test].mean())
        fold_majority.append(majority[test].mean())
    return {"fold_acc": np.array(fold_acc), "fold_majority": np.array(fold_majority), "correct": correct,
            "majority_correct": majority, "kept": kept}

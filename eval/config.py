"""Evaluation settings; every default is defined here, once.

`SuiteConfig` is one run of the suite (`eval.suite.run_suite`); `python -m eval.run` and `eval.compare` take their
option defaults from it. `EvalConfig` is the `eval` section of a run's config: the quick probe reported during
pre-training and the suite a study runs after it. Its suite fields default to SuiteConfig's, and
`EvalConfig.suite_config()` turns it into the SuiteConfig a study runs.

Two measurement protocols share one engine (`SuiteConfig.protocol`): "harness" (this project's protocol: selection on
held-out train data, trained poolers, attention masks) and "reference" (how the paper's reference code measured, every
quirk a named switch of `ReferenceSwitches`; see studies/paper/REFERENCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from common.config import require
from eval.pooling import POOLINGS, check_poolings
from eval.tasks import TASKS, get_spec

GLUE_DIR = "../shared/data/glue"  # the offline GLUE copy, relative to the repository root
PROTOCOLS = ("harness", "reference")


@dataclass(frozen=True)
class ProbeConfig:
    """The linear probe's training and its hyper-parameter search (eval.probes.fit_probe)."""

    weight_decays: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01, 0.001)  # strongest first: ties keep it
    max_epochs: int = 40
    patience: int = 5  # stop a candidate after this many epochs without a better held-out score
    batch_size: int = 128
    lr: float = 1e-3
    pooler_lr: float = 3e-2  # the attention query must grow to O(sqrt(d)) to focus: a larger step
    val_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class ReferenceSwitches:
    """The quirks of the paper's reference code that the "reference" protocol replays, one switch each.

    All are on by default; each can be turned off alone (the harness's behaviour for that one aspect), so its effect
    on a number can be measured. File references are to aymen-000/T-JEPA-for-Text-Representation-Learning at the
    commits listed in studies/paper/REFERENCE.md (representation_analysis.py @0b695a6, finetune_*.py @29250ca and
    @aaa2c4c). The reference's own random draws are unseeded; here every draw is seeded, so runs repeat. Switches that
    SELECT ON DEV (`dev_cv_probe`, `probe_best_epoch_on_dev`) replay exactly the flaw the harness protocol avoids.
    """

    no_attention_mask: bool = True
    """Encode without an attention mask: every text is padded to max_len and real tokens attend to the padding;
    pooling then drops pad positions. representation_analysis.py:EncoderWrapper.encode (takes attention_mask and
    ignores it: `hidden = self.encoder(input_ids)`), mlp.py:Attention.forward (no mask argument), the same in every
    finetune_*.py forward. Off: attention masks, as the harness."""

    pair_as_one_text: bool = True
    """Pair tasks (MRPC, STS-B, MNLI) enter the analysis as ONE text f"{s1} [SEP] {s2}" (the tokenizer makes the
    literal [SEP] the special token), embedded once; geometry and the dev-CV probe use that joint vector.
    representation_analysis.py:load_split. Off: each sentence embedded alone (geometry on the first sentences, the
    dev-CV probe on [u, v, |u-v|, u*v]). The GLUE probes (finetune_*.py) always encode the sentences separately."""

    first_n_dev: bool = True
    """The analysis reads the FIRST `SuiteConfig.reference_n` (2000) dev rows in file order, no sampling (MNLI: the
    whole validation_matched file, not the offline 50/50 half). representation_analysis.py:load_split
    (`ds.select(range(max_samples))`). Off: the harness's seeded sample of min(n_dev, geometry_n) dev rows."""

    weighted_is_mean: bool = True
    """"weighted" pooling is softmax over never-trained all-ones position weights, i.e. exactly mean pooling.
    representation_analysis.py:WeightedMeanPooling (nothing trains `self.weights`; encode runs under no_grad).
    Off: the harness's position-weighted mean (weights 1..n)."""

    attention_untrained: bool = True
    """"attention" pooling is an UNTRAINED random pooler: query ~ N(0, I), key = Linear(d, d, bias=False) with
    Xavier-uniform weights, score = q . key(h) / sqrt(d) over real tokens. representation_analysis.py:AttentionPooling
    and main (one unseeded draw per (arm, pooling)). Here `SuiteConfig.attention_draws` draws seeded by the draw index
    and the hidden size only, the same for every encoder of one width (paired); values are the mean over draws and
    `<metric>_draw_std` rows hold the spread. Off: the harness's attention pooler, trained with the harness probe on
    train data."""

    uniformity_subsample: bool = True
    """Uniformity on a random subset of min(N, 1000) analysis rows (seeded here, by the task and seed only), all pairs
    i<j, log(mean + 1e-12). representation_analysis.py:alignment_uniformity (`torch.randperm(len(Z_t))[:n]`).
    Off: all N rows."""

    alignment_pow4: bool = True
    """Alignment = ||x_hat_i - x_hat_j||^4 (the squared distance raised to alpha = 2) averaged over ALL same-label
    pairs i<j per class, then the unweighted mean over classes; STS-B labels are the score binned by
    np.digitize(score, [1, 2, 3, 4]). representation_analysis.py:alignment_uniformity and run_analysis (labels_disc).
    Off: the harness's alignment, ||x_hat - y_hat||^2 (over (s1, s2) positive pairs when the sentences are embedded
    separately, else over same-label pairs)."""

    erank_centered: bool = True
    """effective_rank = Roy & Vetrov exp(entropy of S / sum S) of the singular values of the CENTRED matrix.
    representation_analysis.py:effective_rank (`Z_c = Z - Z.mean(axis=0)`). Off: RankMe on the raw matrix, as the
    harness (common.spectra.rankme)."""

    spectral_entropy_min_nd: bool = True
    """spectral_entropy = entropy of the centred eigenvalues (S^2) / log(min(N, d)) (the number of singular values of
    the N x d matrix). representation_analysis.py:compute_eigenspectrum (`np.log(len(p))`). Off: / log d."""

    class_dist_unit: bool = True
    """class_distance_ratio on UNIT-normalised vectors, all same-class / cross-class pairs pooled, computed for every
    task (STS-B on its 5 score bins). representation_analysis.py:intra_inter_class_distances. Off: the harness's
    unnormalised ratio, classification tasks only."""

    token_probe: bool = True
    """lexical_acc = the reference token probe: target = most frequent non-special token id of the UNTRUNCATED text,
    ties to the SMALLEST id (np.bincount(ids).argmax(), 0 for a text without tokens); rows whose target class has
    fewer than 5 members dropped; StandardScaler on all kept rows; LogisticRegression(saga, C=1, max_iter=500) scored
    by 3-fold UNSHUFFLED stratified cross-validation (fold mean). representation_analysis.py:token_probe.
    Off: the harness's lexical probe (truncated ids, ties to the first occurrence, seeded 50/50 ridge)."""

    dev_cv_probe: bool = True
    """SELECTION ON DEV: the "semantic" probe is trained and scored on the dev sample itself: StandardScaler on all
    rows, 5-fold unshuffled cross-validation of LogisticRegression(saga, C=1, max_iter=500) -> acc (fold mean) and,
    for two-class tasks, mcc (out-of-fold predictions); STS-B: Ridge(alpha=1) out-of-fold predictions -> spearman.
    Rows of family "devcv". representation_analysis.py:semantic_probe. Off: no devcv rows."""

    probe_best_epoch_on_dev: bool = True
    """SELECTION ON DEV: the GLUE probe's reported score is the best dev score over all training epochs (the epoch
    is chosen on dev; other metrics at that epoch). finetune_*.py (`is_best = val_acc > best_acc`; best_mcc,
    best_spearman, best F1). Off: the last epoch's dev score (no selection at all)."""

    probe_dropout_epoch1: bool = True
    """The GLUE probe head's dropout is active in epoch 1 only: validation calls model.eval() and the next epochs
    re-enable only the norm and classifier modules. finetune_*.py training loops. Off: dropout in every epoch."""

    stsb_cosine: bool = True
    """STS-B "probe" = scale * cos(LayerNorm(u), LayerNorm(v)) + bias (scale, bias from 2.5), MSE; Spearman ignores
    scale and bias, so it is essentially the zero-shot cosine. finetune_stsb.py:SentenceSimilarityModel.
    Off: a linear regression head on [LN(u), LN(v), |.-.|, .*.] like the other pair tasks."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def off(cls, *names: str) -> ReferenceSwitches:
        """All switches on except the named ones; an unknown name fails naming the valid ones."""
        bad = [n for n in names if n not in cls.names()]
        if bad:
            raise ValueError(f"unknown reference switch {', '.join(bad)}: choose from {', '.join(cls.names())}")
        return cls(**{n: False for n in names})

    def label(self) -> str:
        """'all' or the switches that are off, e.g. 'off: alignment_pow4'; used in notes and sample keys."""
        off = [n for n in self.names() if not getattr(self, n)]
        return "all" if not off else "off: " + ", ".join(off)


@dataclass(frozen=True)
class SuiteConfig:
    """One run of the suite: tasks x poolings, subsamples, geometry sample, resamples, seed, protocol."""

    tasks: tuple[str, ...] = tuple(TASKS)
    poolings: tuple[str, ...] = POOLINGS
    max_len: int = 128
    batch_size: int = 64
    max_train: int | None = None  # seeded subsample of train; None = all
    max_dev: int | None = None  # seeded subsample of dev (quick checks only); None = all
    geometry_n: int = 1000  # dev sentences per task for geometry: min(n_dev, geometry_n)
    n_boot: int = 200
    # Spectrum metrics: two eigendecompositions per resample. 200 (was 50): between two resampler seeds the 95%
    # endpoints moved by up to 22% of the interval's width with 50 resamples (median 13%), 12% with 200 (median 8%),
    # 5% with 1000; and 50 resamples gave intervals 14% narrower than 1000 on average (up to 24%), 200 gave 3%
    # (MiniLM, SST-2 and STS-B, mean pooling; `python -m benchmarks.eval_suite --ci-stability`). 1000 would cost
    # ~24 s per task x pooling on a 2-core laptop.
    n_boot_spectral: int = 200
    seed: int = 0  # seeds everything: subsamples, probe splits and shuffling, resamples
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # its own seed is replaced by `seed`
    protocol: str = "harness"  # "harness" | "reference" (the paper's reference code, see ReferenceSwitches)
    switches: ReferenceSwitches = field(default_factory=ReferenceSwitches)  # used by protocol="reference" only
    attention_draws: int = 5  # reference "attention": untrained random poolers, the same K draws for every encoder
    reference_n: int = 2000  # reference analysis: the first N dev rows (representation_analysis.py --max_samples)
    reference_max_epochs: int | None = None  # cap on the reference GLUE probes' logged epochs (None: as logged)

    def validate(self) -> None:
        for t in self.tasks:
            get_spec(t)
        check_poolings(list(self.poolings))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")
        if self.protocol != "reference" and self.switches != ReferenceSwitches():
            raise ValueError(f"reference switches ({self.switches.label()}) apply to protocol 'reference' only: "
                             "add --protocol reference")
        for name in ("attention_draws", "n_boot", "n_boot_spectral"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.reference_n < 10:
            raise ValueError(f"reference_n={self.reference_n}: must be >= 10 (5-fold cross-validation)")
        if self.reference_max_epochs is not None and self.reference_max_epochs < 1:
            raise ValueError(f"reference_max_epochs={self.reference_max_epochs}: must be >= 1 or None")


SUITE_DEFAULTS = SuiteConfig()


@dataclass(frozen=True)
class EvalConfig:
    """The quick probe reported during pre-training (what ASHA stops on) and the suite run after it.
    Task and pooling names are checked against eval's registries by the study before any trial starts."""

    glue_dir: str | None = GLUE_DIR  # GLUE layout; null reads nyu-mll/glue from the Hub
    quick_tasks: tuple[str, ...] = ("sst2", "stsb")  # probed with mean pooling at every train.eval_every
    quick_train: int = 1000  # seeded subsample of each quick task's train split: the quick probe is fitted on it
    # Seeded HELD-OUT examples of each quick task's TRAIN split (disjoint from quick_train), on which the quick probe
    # is scored (select/quick/<task>); dev is never read. The name is kept for existing configs.
    quick_dev: int = 500
    quick_max_len: int = 64
    tasks: tuple[str, ...] = SUITE_DEFAULTS.tasks  # the full suite for trials that finish
    poolings: tuple[str, ...] = SUITE_DEFAULTS.poolings
    max_train: int | None = SUITE_DEFAULTS.max_train  # seeded train subsample per task (None: all)
    max_dev: int | None = SUITE_DEFAULTS.max_dev
    n_boot: int = SUITE_DEFAULTS.n_boot
    geometry_n: int = SUITE_DEFAULTS.geometry_n
    cpus: float = 1.0  # CPUs of the Ray task that runs the suite (plus a GPU when train.use_gpu)

    def __post_init__(self) -> None:
        for name in ("quick_train", "quick_dev", "quick_max_len", "n_boot", "geometry_n"):
            require(getattr(self, name) >= 8, name, getattr(self, name), "must be >= 8")
        for name in ("max_train", "max_dev"):
            require(getattr(self, name) is None or getattr(self, name) >= 8, name, getattr(self, name),
                    "must be >= 8 or null")
        require(self.cpus > 0, "cpus", self.cpus, "must be > 0")

    def suite_config(self) -> SuiteConfig:
        """The suite a study runs on each finished trial (protocol "harness"; a study replaces it to replay the
        reference); what this section leaves out keeps SuiteConfig's defaults (max_len, batch_size, n_boot_spectral,
        seed, probe, protocol and its settings)."""
        return SuiteConfig(tasks=self.tasks, poolings=self.poolings, max_train=self.max_train, max_dev=self.max_dev,
                           n_boot=self.n_boot, geometry_n=self.geometry_n)

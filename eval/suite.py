"""The evaluation engine: one encoder x tasks x poolings -> a tidy results table, under one of two protocols.

`SuiteConfig.protocol` = "harness" (default), per task: token states of train and dev are computed once; per
pooling: a probe is fitted (its L2 strength and epochs chosen on a held-out 20% of TRAIN) and scored on dev (family
`probe`), its held-out-train score is reported too (family `select`: what a study may select on), and the geometry of
N dev sentence vectors is measured (family `geom`; for "attention", with the pooler trained by that task's probe).

"reference" replays how the paper's reference code measured (studies/paper/REFERENCE.md), each quirk a switch of
`eval.config.ReferenceSwitches`: the GLUE probes of finetune_*.py (family `probe`; trained on train, the best DEV epoch
reported), and representation_analysis.py on the first N dev rows: geometry and the token probe (family `geom`) and
the probe cross-validated on dev (family `devcv`). Both families marked "selected on dev" in their notes replay the
selection on dev that the harness protocol avoids.

Every value gets a bootstrap 95% CI; the bootstrap replicates are kept so that `eval.compare` can run paired tests.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from eval import geometry as geo
from eval.config import SUITE_DEFAULTS, SuiteConfig
from eval.embed import StateCache, check_encoder, encoder_key, load_encoder
from eval.pooling import pair_features, pool_texts, reference_poolers
from eval.probes import (
    REFERENCE_PROBES,
    ProbeResult,
    Split,
    dev_cv_probe,
    fit_probe,
    fit_reference_probe,
)
from eval.scores import SCORES
from eval.stats import Measure, average_draws, bootstrap_indices, counts, percentile_ci
from eval.tasks import TaskData, TaskSpec, check_glue_dir, get_spec, joint_texts, load_task, subsample

logger = logging.getLogger(__name__)

COLUMNS = [
    "encoder", "task", "pooling", "metric", "value", "ci_low", "ci_high", "n", "family", "protocol", "group", "note",
]
PROTOCOL_PREFIX = {"harness": "", "reference": "ref/"}  # of a protocol's metric names in result_metrics
REFERENCE_UNIFORMITY_N = 1000  # representation_analysis.py:alignment_uniformity, n = min(len(Z), 1000)
SELECTED_ON_DEV = "SELECTED ON DEV"  # the note prefix of every reference value whose choice was made on dev


@dataclass
class SuiteResult:
    results: pd.DataFrame  # COLUMNS
    replicates: pd.DataFrame  # encoder, task, pooling, family, metric, protocol, sample_key, replicates
    spectra: pd.DataFrame  # encoder, task, pooling, protocol, rank, eigenvalue (covariance, full geometry sample)
    timings: dict[str, float]


def run_suite(
    encoder: str | Path,
    tokenizer: str | Path | None = None,
    glue_dir: Path | None = None,
    cfg: SuiteConfig = SUITE_DEFAULTS,
    name: str | None = None,
    group: str | None = None,
    cache_dir: Path | None = None,
) -> SuiteResult:
    """Evaluate one encoder; glue_dir=None reads the tasks from the Hugging Face hub. Returns the tables and
    logs nothing to a tracker: the caller records them (e.g. `result_metrics` of the results)."""
    preflight(encoder, tokenizer, glue_dir, cfg)
    model, tok = load_encoder(encoder, tokenizer)
    name = name or Path(encoder).resolve().name
    attend_padding = cfg.protocol == "reference" and cfg.switches.no_attention_mask
    cache = StateCache(model, tok, encoder_key(encoder), cfg.max_len, cfg.batch_size, cache_dir, attend_padding)
    run = _Run(name, group or name, cfg, tok)
    for task in cfg.tasks:
        logger.info("%s: task %s (%s protocol)", name, task, cfg.protocol)
        run.task(load_task(task, glue_dir), cache)
    return run.result()


def result_metrics(results: pd.DataFrame) -> dict[str, float]:
    """{"<family>/<task>/<pooling>/<metric>": value} of a results table: `probe/sst2/attention/acc`,
    `select/sst2/attention/acc`, `geom/stsb/mean/uniformity`; rows of the reference protocol get the prefix `ref/`
    (`ref/geom/sst2/attention/uniformity`, `ref/devcv/sst2/mean/acc`)."""
    protocols = results["protocol"] if "protocol" in results else pd.Series("harness", index=results.index)
    return {f"{PROTOCOL_PREFIX.get(p, '')}{r.family}/{r.task}/{r.pooling}/{r.metric}": float(r.value)
            for p, r in zip(protocols, results.itertuples(), strict=True)}


def headline_metrics(results: pd.DataFrame) -> dict[str, float]:
    """The numbers a study reports per trial, per protocol (reference ones prefixed `ref/`):
    - select/mean_score (harness only): each task's main metric on the HELD-OUT TRAIN split of its chosen probe,
      averaged over tasks and poolings (what a study may select on), and select/mean_score/<pooling>;
    - probe/mean_score: the same on dev (the final, untouched score), and probe/mean_score/<pooling>;
    - geom/mean_uniformity (lower: more uniform) and geom/mean_uniformity_centered (its control)."""
    if "protocol" not in results:
        results = results.assign(protocol="harness")
    out: dict[str, float] = {}
    main_metric = results["task"].map(lambda t: get_spec(t).metrics[0])
    for protocol, prefix in PROTOCOL_PREFIX.items():
        rows = results[results["protocol"] == protocol]
        for family in ("select", "probe"):
            main = rows[(rows["family"] == family) & (rows["metric"] == main_metric[rows.index])]
            if not main.empty:
                out[f"{prefix}{family}/mean_score"] = float(main["value"].mean())
                out.update({f"{prefix}{family}/mean_score/{p}": float(v)
                            for p, v in main.groupby("pooling")["value"].mean().items()})
        for metric in ("uniformity", "uniformity_centered"):
            values = rows[(rows["family"] == "geom") & (rows["metric"] == metric)]
            if not values.empty:
                out[f"{prefix}geom/mean_{metric}"] = float(values["value"].mean())
    return out


def preflight_tasks(glue_dir: Path | None, cfg: SuiteConfig, extra_tasks: tuple[str, ...] = ()) -> None:
    """Check task and pooling names, and the GLUE files of every task, before an encoder exists."""
    cfg.validate()
    for task in extra_tasks:
        get_spec(task)
    if glue_dir is not None:
        check_glue_dir(glue_dir, list(dict.fromkeys([*cfg.tasks, *extra_tasks])))


def preflight(encoder: str | Path, tokenizer: str | Path | None, glue_dir: Path | None, cfg: SuiteConfig) -> None:
    """Check names and paths before any work; raises ValueError / FileNotFoundError naming the fix."""
    cfg.validate()
    check_encoder(encoder, tokenizer)
    if glue_dir is not None:
        check_glue_dir(glue_dir, list(cfg.tasks))


def _split(cache: StateCache, spec: TaskSpec, split: str, df: pd.DataFrame) -> Split:
    """Encode the distinct texts of a split once; examples point into them."""
    columns = ["text_a", "text_b"] if spec.is_pair else ["text_a"]
    texts = list(dict.fromkeys(df[columns].to_numpy().ravel().tolist()))
    where = {t: i for i, t in enumerate(texts)}
    a = df["text_a"].map(where).to_numpy()
    b = df["text_b"].map(where).to_numpy() if spec.is_pair else None
    return Split(cache.get(spec.name, split, texts), a, b, df["label"].to_numpy())


def _hash(df: pd.DataFrame) -> str:
    return hashlib.sha1(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:12]


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


class _Run:
    def __init__(self, name: str, group: str, cfg: SuiteConfig, tokenizer) -> None:
        self.name, self.group, self.cfg, self.tokenizer = name, group, cfg, tokenizer
        self.special_ids = set(tokenizer.all_special_ids)
        self.rows: list[dict] = []
        self.reps: list[dict] = []
        self.spectra: list[pd.DataFrame] = []
        self.timings = {"embed": 0.0, "probes": 0.0, "geometry": 0.0, "stats": 0.0}

    def result(self) -> SuiteResult:
        return SuiteResult(
            pd.DataFrame(self.rows, columns=COLUMNS), pd.DataFrame(self.reps),
            pd.concat(self.spectra, ignore_index=True) if self.spectra else pd.DataFrame(), self.timings,
        )

    def _add(self, task: str, pooling: str, family: str, metric: str, value: float, replicates: np.ndarray,
             n: int, sample_key: str, note: str) -> None:
        low, high = percentile_ci(replicates, value)
        protocol = self.cfg.protocol
        self.rows.append(dict(encoder=self.name, group=self.group, task=task, pooling=pooling, family=family,
                              protocol=protocol, metric=metric, value=float(value), ci_low=low, ci_high=high, n=n,
                              note=note))
        self.reps.append(dict(encoder=self.name, task=task, pooling=pooling, family=family, metric=metric,
                              protocol=protocol, sample_key=sample_key, replicates=[float(r) for r in replicates]))

    def _add_measures(self, task: str, pooling: str, family: str, measures: dict[str, Measure], key: str,
                      note: str = "") -> None:
        for metric, m in measures.items():
            self._add(task, pooling, family, metric, m.value, m.replicates, m.n, key, _join(m.note, note))

    def _add_spectrum(self, task: str, pooling: str, eigenvalues: np.ndarray) -> None:
        self.spectra.append(pd.DataFrame({"encoder": self.name, "task": task, "pooling": pooling,
                                          "protocol": self.cfg.protocol, "rank": np.arange(1, len(eigenvalues) + 1),
                                          "eigenvalue": eigenvalues}))

    def task(self, data: TaskData, cache: StateCache) -> None:
        if self.cfg.protocol == "reference":
            self._reference_task(data, cache)
        else:
            self._harness_task(data, cache)

    # ---------------------------------------------------------------- the harness protocol

    def _harness_task(self, data: TaskData, cache: StateCache) -> None:
        cfg, spec = self.cfg, data.spec
        t0 = time.perf_counter()
        train_df = subsample(data.train, cfg.max_train, cfg.seed)
        train = _split(cache, spec, "train", train_df)
        dev_df = subsample(data.dev, cfg.max_dev, cfg.seed)
        dev = _split(cache, spec, "dev", dev_df)
        self.timings["embed"] += time.perf_counter() - t0
        # The geometry sample and all resamples depend on the dev examples and the seed only, so two
        # encoders run with the same settings share them; sample keys let eval.compare check that.
        key = f"{_hash(dev_df)}-seed{cfg.seed}-boot{cfg.n_boot}"
        select_key = f"select-{_hash(train_df)}-seed{cfg.seed}-boot{cfg.n_boot}"  # held-out TRAIN only
        n_geo = min(len(dev), cfg.geometry_n)
        sample = np.sort(np.random.default_rng(cfg.seed).choice(len(dev), n_geo, replace=False))
        targets = geo.lexical_targets([dev.states.ids(i) for i in dev.a[sample]], self.special_ids)
        for pooling in cfg.poolings:
            t0 = time.perf_counter()
            probe = fit_probe(spec, pooling, train, dev, replace(cfg.probe, seed=cfg.seed))
            t1 = time.perf_counter()
            score = self._probe_rows(data, pooling, dev, probe, f"probe-{key}")
            self._select_rows(data, pooling, train, probe, select_key)
            t2 = time.perf_counter()
            t_geometry = self._geometry_rows(data, pooling, dev, probe, sample, targets,
                                             f"{key}-n{n_geo}-spectral{cfg.n_boot_spectral}")
            t3 = time.perf_counter()
            self.timings["probes"] += t1 - t0
            self.timings["geometry"] += t_geometry
            self.timings["stats"] += (t2 - t1) + (t3 - t2 - t_geometry)
            logger.info("%s/%s: %s=%.3f (l2=%g, %d epochs) | probe %.1fs, geometry %.1fs, bootstrap %.1fs",
                        spec.name, pooling, spec.metrics[0], score, probe.weight_decay, probe.epochs, t1 - t0,
                        t_geometry, t3 - t1 - t_geometry)

    def _probe_rows(self, data: TaskData, pooling: str, dev: Split, probe: ProbeResult, key: str) -> float:
        """Dev scores with bootstrap CIs; returns the first (main) score."""
        spec = data.spec
        boot = bootstrap_indices(len(dev), self.cfg.n_boot, self.cfg.seed, spec.name, "probe")
        note = _join(f"l2={probe.weight_decay:g}, epochs={probe.epochs} (chosen on held-out train)", data.note)
        for metric in spec.metrics:
            fn = SCORES[metric]
            self._add(spec.name, pooling, "probe", metric, fn(dev.y, probe.dev_pred),
                      fn(dev.y[boot], probe.dev_pred[boot]), len(dev), key, note)
        return float(SCORES[spec.metrics[0]](dev.y, probe.dev_pred))

    def _select_rows(self, data: TaskData, pooling: str, train: Split, probe: ProbeResult, key: str) -> None:
        """The chosen probe's scores on the held-out part of TRAIN its L2 strength and epochs were chosen on
        (family `select`): a function of the train split only, never of dev."""
        spec, y, pred = data.spec, train.y[probe.heldout_idx], probe.heldout_pred
        boot = bootstrap_indices(len(y), self.cfg.n_boot, self.cfg.seed, spec.name, "select")
        note = _join(f"held-out {self.cfg.probe.val_fraction:.0%} of train, probe fitted on the rest with the "
                     f"chosen l2={probe.weight_decay:g}, epochs={probe.epochs}; never dev", data.note)
        for metric in spec.metrics:
            fn = SCORES[metric]
            self._add(spec.name, pooling, "select", metric, fn(y, pred), fn(y[boot], pred[boot]), len(y), key, note)

    def _geometry_rows(self, data: TaskData, pooling: str, dev: Split, probe: ProbeResult, sample: np.ndarray,
                       targets: np.ndarray, key: str) -> float:
        """Geometry of the sampled dev sentences with bootstrap CIs; returns the time spent on values."""
        cfg, spec = self.cfg, data.spec
        t0 = time.perf_counter()
        vectors = pool_texts(dev.states, pooling, probe.pooler)  # "attention": the task's trained pooler
        u = vectors[dev.a[sample]]
        v = vectors[dev.b[sample]] if spec.is_pair else None
        values = _geometry(spec, u, v, dev.y[sample], None, cfg.n_boot_spectral)
        lexical = dict(zip(("lexical_acc", "lexical_majority"), geo.lexical_probe(u, targets, cfg.seed),
                           strict=True))
        self._add_spectrum(spec.name, pooling, geo.spectrum(u))
        t_values = time.perf_counter() - t0
        weights = counts(bootstrap_indices(len(u), cfg.n_boot, cfg.seed, spec.name, "geometry"), len(u))
        replicates = _geometry(spec, u, v, dev.y[sample], weights, cfg.n_boot_spectral)
        for metric, (value, n, note) in values.items():
            self._add(spec.name, pooling, "geom", metric, value, replicates[metric][0], n, f"geom-{key}",
                      _join(note, data.note))
        half = next(iter(lexical.values()))
        boot = bootstrap_indices(len(half), cfg.n_boot, cfg.seed, spec.name, "lexical")
        for metric, hits in lexical.items():
            self._add(spec.name, pooling, "geom", metric, hits.mean(), hits[boot].mean(1), len(hits),
                      f"lexical-{key}", _join("target: most frequent non-special token", data.note))
        return t_values

    # ---------------------------------------------------------------- the reference protocol

    def _reference_task(self, data: TaskData, cache: StateCache) -> None:
        cfg, spec, sw = self.cfg, data.spec, self.cfg.switches
        t0 = time.perf_counter()
        # The GLUE probes (finetune_*.py): trained on train, scored on dev, sentences of a pair encoded separately.
        train_df = subsample(data.train, cfg.max_train, cfg.seed)
        dev_df = subsample(data.dev, cfg.max_dev, cfg.seed)
        train, dev = _split(cache, spec, "train", train_df), _split(cache, spec, "dev", dev_df)
        # The analysis (representation_analysis.py): the first N dev rows, a pair as one text.
        if sw.first_n_dev:
            analysis = data.published_dev.iloc[: cfg.reference_n].reset_index(drop=True)
            sample_note = f"analysis: the first {len(analysis)} dev rows in file order"
            analysis_note = ""  # MNLI: the whole dev_matched file, not the probe's half
        else:
            n_geo = min(len(dev_df), cfg.geometry_n)
            rows = np.sort(np.random.default_rng(cfg.seed).choice(len(dev_df), n_geo, replace=False))
            analysis = dev_df.iloc[rows].reset_index(drop=True)
            sample_note, analysis_note = f"analysis: a seeded sample of {n_geo} dev rows", data.note
        joint = spec.is_pair and sw.pair_as_one_text
        texts_a = joint_texts(analysis) if joint else analysis["text_a"].tolist()
        a_states = cache.get(spec.name, "analysis-joint" if joint else "analysis-a", texts_a)
        b_states = (cache.get(spec.name, "analysis-b", analysis["text_b"].tolist())
                    if spec.is_pair and not joint else None)
        self.timings["embed"] += time.perf_counter() - t0
        y = analysis["label"].to_numpy()
        labels = geo.score_bins(y) if spec.regression else y
        if sw.token_probe:  # targets from the untruncated text, ties to the smallest id
            ids = self.tokenizer(texts_a, add_special_tokens=False)["input_ids"]
            targets = geo.reference_lexical_targets(ids, self.special_ids)
        else:
            targets = geo.lexical_targets([a_states.ids(i) for i in range(len(a_states))], self.special_ids)
        encoding = _join("no attention mask" if sw.no_attention_mask else "attention masks", f"switches {sw.label()}")
        pairs = ("one text s1 [SEP] s2" if joint else "sentences embedded alone") if spec.is_pair else ""
        analysis_settings = _join(sample_note, pairs, encoding, analysis_note)
        probe_settings = _join(data.note, "s1, s2 encoded separately" if spec.is_pair else "", encoding)
        key = (f"ref-{_hash(analysis)}-seed{cfg.seed}-boot{cfg.n_boot}-spectral{cfg.n_boot_spectral}-"
               f"{hashlib.sha1(repr(sw).encode()).hexdigest()[:8]}")
        probe_key = f"ref-probe-{_hash(dev_df)}-seed{cfg.seed}-boot{cfg.n_boot}"
        for pooling in cfg.poolings:
            t0 = time.perf_counter()
            poolers, draw_note = self._reference_poolers(pooling, a_states.dim, spec, train, dev)
            probe_draws, geom_draws, devcv_draws, spectra = [], [], [], []
            t_probe = t_geom = 0.0
            for pooler in poolers:
                t1 = time.perf_counter()
                probe_draws.append(self._reference_probe(spec, pooling, pooler, train, dev))
                t2 = time.perf_counter()
                x = pool_texts(a_states, pooling, pooler)
                xb = None if b_states is None else pool_texts(b_states, pooling, pooler)
                geom, devcv = self._reference_analysis(spec, x, xb, y, labels, targets)
                geom_draws.append(geom)
                devcv_draws.append(devcv)
                spectra.append(geo.spectrum(x))
                t_probe, t_geom = t_probe + t2 - t1, t_geom + time.perf_counter() - t2
            self.timings["probes"] += t_probe + (time.perf_counter() - t0 - t_probe - t_geom)  # incl. pooler fits
            self.timings["geometry"] += t_geom
            self._add_measures(spec.name, pooling, "probe", average_draws(probe_draws, draw_note), probe_key,
                               probe_settings)
            self._add_measures(spec.name, pooling, "geom", average_draws(geom_draws, draw_note), key,
                               analysis_settings)
            if sw.dev_cv_probe:
                self._add_measures(spec.name, pooling, "devcv", average_draws(devcv_draws, draw_note), key,
                                   analysis_settings)
            self._add_spectrum(spec.name, pooling, np.mean(spectra, axis=0))
            logger.info("%s/%s (reference, %d draw%s): probe %.1fs, analysis %.1fs", spec.name, pooling,
                        len(poolers), "s" if len(poolers) > 1 else "", t_probe, t_geom)

    def _reference_poolers(self, pooling: str, dim: int, spec: TaskSpec, train: Split,
                           dev: Split) -> tuple[list[Callable | None], str]:
        """The pooler(s) of one pooling under the reference protocol, and what they are (for notes)."""
        cfg, sw = self.cfg, self.cfg.switches
        poolers = reference_poolers(pooling, dim, sw.weighted_is_mean, sw.attention_untrained, cfg.attention_draws)
        if poolers is None:  # attention_untrained off: the harness's pooler, trained with the harness probe on train
            return [fit_probe(spec, "attention", train, dev, replace(cfg.probe, seed=cfg.seed)).pooler], ""
        if pooling == "attention":
            return poolers, f"untrained random attention draws (seeded by draw index and width {dim})"
        return poolers, ""

    def _reference_probe(self, spec: TaskSpec, pooling: str, pooler: Callable | None, train: Split,
                         dev: Split) -> dict[str, Measure]:
        """The finetune_*.py probe on this pooling's vectors; dev scores with bootstrap CIs."""
        cfg, settings = self.cfg, REFERENCE_PROBES[spec.name]

        def vectors(split: Split) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
            pooled = pool_texts(split.states, pooling, pooler)
            return pooled[split.a], None if split.b is None else pooled[split.b], split.y

        result = fit_reference_probe(spec, vectors(train), vectors(dev), settings, cfg.switches, cfg.seed,
                                     cfg.reference_max_epochs)
        main = spec.metrics[0]
        if cfg.switches.probe_best_epoch_on_dev:
            note = (f"{SELECTED_ON_DEV}: the best dev {main} over {result.epochs} epochs (epoch {result.epoch}), "
                    f"other metrics at that epoch")
        else:
            note = f"the last of {result.epochs} epochs (probe_best_epoch_on_dev off)"
        boot = bootstrap_indices(len(dev), cfg.n_boot, cfg.seed, spec.name, "probe")
        note = _join(note, settings.source)
        return {m: Measure(float(SCORES[m](dev.y, result.dev_pred)), SCORES[m](dev.y[boot], result.dev_pred[boot]),
                           len(dev), note) for m in spec.metrics}

    def _reference_analysis(self, spec: TaskSpec, x: np.ndarray, xb: np.ndarray | None, y: np.ndarray,
                            labels: np.ndarray, targets: np.ndarray) -> tuple[dict[str, Measure], dict[str, Measure]]:
        """representation_analysis.py:run_analysis on the analysis vectors x (and the second sentences xb when a
        pair is not one text): (geometry and token probe, dev-CV probe) measures."""
        cfg, sw, n = self.cfg, self.cfg.switches, len(x)
        x = np.asarray(x, dtype=np.float64)
        xb = None if xb is None else np.asarray(xb, dtype=np.float64)
        w = counts(bootstrap_indices(n, cfg.n_boot, cfg.seed, spec.name, "ref-geometry"), n)
        out: dict[str, Measure] = {}
        # uniformity (and its centred control) on the subset the reference draws
        if sw.uniformity_subsample and n > REFERENCE_UNIFORMITY_N:
            sub = np.sort(np.random.default_rng([cfg.seed, n, 1000]).permutation(n)[:REFERENCE_UNIFORMITY_N])
            sub_note = f"on a seeded random {len(sub)} of the {n} rows"
        else:
            sub, sub_note = np.arange(n), ""
        w_sub = counts(bootstrap_indices(len(sub), cfg.n_boot, cfg.seed, spec.name, "ref-uniformity"), len(sub))
        for metric, centered in (("uniformity", False), ("uniformity_centered", True)):
            out[metric] = Measure(float(geo.uniformity(x[sub], centered=centered)),
                                  geo.uniformity(x[sub], centered=centered, w=w_sub), len(sub),
                                  _join(sub_note, "centred on the sample mean" if centered else ""))
        bins = "STS-B score binned by np.digitize(score, [1, 2, 3, 4])" if spec.regression else ""
        if sw.alignment_pow4:
            out["alignment"] = Measure(geo.alignment_pow4(x, labels), geo.alignment_pow4(x, labels, w), n,
                                       _join("mean ||x_hat_i - x_hat_j||^4 over same-label pairs, per class, then "
                                             "over classes", bins))
        elif xb is not None:
            pos = spec.positive(y)
            out["alignment"] = Measure(float(geo.alignment(x, xb, pos.astype(float))), geo.alignment(x, xb, w * pos),
                                       int(pos.sum()), f"||x_hat - y_hat||^2, positives: {spec.positive_doc}")
        else:
            out["alignment"] = Measure(float(geo.alignment_same_label(x, labels)),
                                       geo.alignment_same_label(x, labels, w), n,
                                       _join("||x_hat - y_hat||^2 over same-label pairs", bins))
        spectral = geo.reference_spectral_metrics(x, None, sw.erank_centered, sw.spectral_entropy_min_nd)
        spectral_reps = geo.reference_spectral_metrics(x, w[: cfg.n_boot_spectral], sw.erank_centered,
                                                       sw.spectral_entropy_min_nd)
        for metric, value in spectral.items():
            out[metric] = Measure(value, spectral_reps[metric], n, f"CI from {cfg.n_boot_spectral} resamples")
        if sw.class_dist_unit:
            out["class_distance_ratio"] = Measure(
                float(geo.class_distance_ratio(geo.normalize(x), labels)),
                geo.class_distance_ratio(geo.normalize(x), labels, w), n, _join("unit-normalised vectors", bins))
        elif not spec.regression:
            feats = x if xb is None else pair_features(x, xb)
            out["class_distance_ratio"] = Measure(float(geo.class_distance_ratio(feats, labels)),
                                                  geo.class_distance_ratio(feats, labels, w), n, "")
        out.update(self._reference_lexical(spec, x, targets))
        return out, (self._dev_cv(spec, x if xb is None else pair_features(x, xb), y) if sw.dev_cv_probe else {})

    def _reference_lexical(self, spec: TaskSpec, x: np.ndarray, targets: np.ndarray) -> dict[str, Measure]:
        cfg = self.cfg
        if not cfg.switches.token_probe:  # the harness's lexical probe on the analysis vectors
            hits, majority = geo.lexical_probe(x, targets, cfg.seed)
            boot = bootstrap_indices(len(hits), cfg.n_boot, cfg.seed, spec.name, "lexical")
            note = "target: most frequent non-special token (harness lexical probe)"
            return {"lexical_acc": Measure(hits.mean(), hits[boot].mean(1), len(hits), note),
                    "lexical_majority": Measure(majority.mean(), majority[boot].mean(1), len(hits), note)}
        r = geo.reference_token_probe(x, targets, cfg.seed)
        kept = int(r["kept"].sum())
        if len(r["fold_acc"]) == 0:
            nan = Measure(float("nan"), np.array([]), kept, "fewer than two target classes with >= 5 rows")
            return {"lexical_acc": nan, "lexical_majority": nan}
        boot = bootstrap_indices(len(r["correct"]), cfg.n_boot, cfg.seed, spec.name, "ref-lexical")
        note = (f"3-fold unshuffled CV on the {kept} rows whose target has >= 5 members (fold std "
                f"{r['fold_acc'].std():.3g})")
        return {"lexical_acc": Measure(float(r["fold_acc"].mean()), r["correct"][boot].mean(1), kept, note),
                "lexical_majority": Measure(float(r["fold_majority"].mean()), r["majority_correct"][boot].mean(1),
                                            kept, _join("majority target of the fitting folds (not reported by "
                                                        "the reference)", note))}

    def _dev_cv(self, spec: TaskSpec, feats: np.ndarray, y: np.ndarray) -> dict[str, Measure]:
        """representation_analysis.py:semantic_probe: trained and scored on the dev sample (SELECTED ON DEV)."""
        cfg = self.cfg
        r = dev_cv_probe(feats, y, spec.regression, cfg.seed)
        boot = bootstrap_indices(len(y), cfg.n_boot, cfg.seed, spec.name, "ref-devcv")
        note = f"{SELECTED_ON_DEV}: trained and scored on the dev sample, 5-fold unshuffled cross-validation"
        if spec.regression:
            return {"spearman": Measure(float(SCORES["spearman"](y, r.pred)), SCORES["spearman"](y[boot], r.pred[boot]),
                                        len(y), _join(note, "Ridge(alpha=1) out-of-fold predictions"))}
        out = {"acc": Measure(float(r.fold_acc.mean()), SCORES["acc"](y[boot], r.pred[boot]), len(y),
                              _join(note, f"mean of the fold accuracies (fold std {r.fold_acc.std():.3g})"))}
        if spec.num_labels == 2:
            out["mcc"] = Measure(float(SCORES["mcc"](y, r.pred)), SCORES["mcc"](y[boot], r.pred[boot]), len(y),
                                 _join(note, "out-of-fold predictions"))
        return out


def _geometry(
    spec: TaskSpec, u: np.ndarray, v: np.ndarray | None, y: np.ndarray, w: np.ndarray | None, n_spectral: int
) -> dict[str, tuple]:
    """metric -> (value, n, note); with resample counts w (B, N) the values are (B,) replicates."""
    w_spec = None if w is None else w[:n_spectral]
    out: dict[str, tuple] = {
        "uniformity": (geo.uniformity(u, w=w), len(u), ""),
        "uniformity_centered": (geo.uniformity(u, centered=True, w=w), len(u), "centred on the sample mean"),
        "mean_cosine": (geo.mean_cosine(u, w=w), len(u), ""),
    }
    if spec.is_pair:
        pos = spec.positive(y)
        w_pos = pos.astype(float) if w is None else w * pos
        out["alignment"] = (geo.alignment(u, v, w_pos), int(pos.sum()), f"positives: {spec.positive_doc}")
    else:
        out["alignment"] = (geo.alignment_same_label(u, y, w), len(u), f"positives: {spec.positive_doc}")
    spectral_note = f"CI from {n_spectral} resamples"
    out.update({m: (val, len(u), spectral_note) for m, val in geo.spectral_metrics(u, w_spec).items()})
    if not spec.regression:
        feats = u if v is None else pair_features(u, v)
        note = "" if v is None else "on pair features [u, v, |u-v|, u*v]"
        out["class_distance_ratio"] = (geo.class_distance_ratio(feats, y, w), len(u), note)
    return out

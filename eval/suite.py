"""The evaluation engine: one encoder x tasks x poolings -> a tidy results table.

Per task: token states of train and dev are computed once; per pooling: a probe is fitted and
scored on dev, and the geometry of N dev sentence vectors is measured (for "attention", with the
pooler trained by that task's probe). Every value gets a bootstrap 95% CI; the bootstrap replicates
are kept so that `eval.compare` can run paired tests later.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from eval import geometry as geo
from eval.config import SUITE_DEFAULTS, SuiteConfig
from eval.embed import StateCache, check_encoder, encoder_key, load_encoder
from eval.pooling import pool_texts
from eval.probes import ProbeResult, Split, fit_probe, pair_features
from eval.scores import SCORES
from eval.stats import bootstrap_indices, counts, percentile_ci
from eval.tasks import TaskData, TaskSpec, check_glue_dir, get_spec, load_task, subsample

logger = logging.getLogger(__name__)

COLUMNS = [
    "encoder", "task", "pooling", "metric", "value", "ci_low", "ci_high", "n", "family", "group", "note",
]


@dataclass
class SuiteResult:
    results: pd.DataFrame  # COLUMNS
    replicates: pd.DataFrame  # encoder, task, pooling, family, metric, sample_key, replicates
    spectra: pd.DataFrame  # encoder, task, pooling, rank, eigenvalue (covariance, full geometry sample)
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
    cache = StateCache(model, tok, encoder_key(encoder), cfg.max_len, cfg.batch_size, cache_dir)
    run = _Run(name, group or name, cfg, set(tok.all_special_ids))
    for task in cfg.tasks:
        logger.info("%s: task %s", name, task)
        run.task(load_task(task, glue_dir), cache)
    return run.result()


def result_metrics(results: pd.DataFrame) -> dict[str, float]:
    """{"probe/<task>/<pooling>/<metric>": value, "geom/...": value} of a results table."""
    return {f"{r.family}/{r.task}/{r.pooling}/{r.metric}": float(r.value) for r in results.itertuples()}


def headline_metrics(results: pd.DataFrame) -> dict[str, float]:
    """The numbers a study optimises: probe/mean_score (each task's main metric, averaged over tasks and
    poolings), probe/mean_score/<pooling>, and geom/mean_uniformity (lower: more uniform)."""
    main = results[(results["family"] == "probe")
                   & (results["metric"] == results["task"].map(lambda t: get_spec(t).metrics[0]))]
    out = {}
    if not main.empty:
        out["probe/mean_score"] = float(main["value"].mean())
        out.update({f"probe/mean_score/{p}": float(v) for p, v in main.groupby("pooling")["value"].mean().items()})
    uniformity = results[(results["family"] == "geom") & (results["metric"] == "uniformity")]
    if not uniformity.empty:
        out["geom/mean_uniformity"] = float(uniformity["value"].mean())
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


class _Run:
    def __init__(self, name: str, group: str, cfg: SuiteConfig, special_ids: set[int]) -> None:
        self.name, self.group, self.cfg, self.special_ids = name, group, cfg, special_ids
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
        self.rows.append(dict(encoder=self.name, group=self.group, task=task, pooling=pooling, family=family,
                              metric=metric, value=float(value), ci_low=low, ci_high=high, n=n, note=note))
        self.reps.append(dict(encoder=self.name, task=task, pooling=pooling, family=family, metric=metric,
                              sample_key=sample_key, replicates=[float(r) for r in replicates]))

    def task(self, data: TaskData, cache: StateCache) -> None:
        cfg, spec = self.cfg, data.spec
        t0 = time.perf_counter()
        train = _split(cache, spec, "train", subsample(data.train, cfg.max_train, cfg.seed))
        dev_df = subsample(data.dev, cfg.max_dev, cfg.seed)
        dev = _split(cache, spec, "dev", dev_df)
        self.timings["embed"] += time.perf_counter() - t0
        # The geometry sample and all resamples depend on the dev examples and the seed only, so two
        # encoders run with the same settings share them; sample keys let eval.compare check that.
        dev_hash = hashlib.sha1(pd.util.hash_pandas_object(dev_df, index=False).to_numpy().tobytes())
        key = f"{dev_hash.hexdigest()[:12]}-seed{cfg.seed}-boot{cfg.n_boot}"
        n_geo = min(len(dev), cfg.geometry_n)
        sample = np.sort(np.random.default_rng(cfg.seed).choice(len(dev), n_geo, replace=False))
        targets = geo.lexical_targets([dev.states.ids(i) for i in dev.a[sample]], self.special_ids)
        for pooling in cfg.poolings:
            t0 = time.perf_counter()
            probe = fit_probe(spec, pooling, train, dev, replace(cfg.probe, seed=cfg.seed))
            t1 = time.perf_counter()
            score = self._probe_rows(data, pooling, dev, probe, f"probe-{key}")
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
        self.spectra.append(pd.DataFrame({"encoder": self.name, "task": spec.name, "pooling": pooling,
                                          "rank": np.arange(1, u.shape[1] + 1), "eigenvalue": geo.spectrum(u)}))
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


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


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

"""The reference protocol: every switch against a direct computation of what the paper's code does
(studies/paper/REFERENCE.md), on constructed data, the real tokenizer, the offline GLUE copy and tiny real encoders."""

from __future__ import annotations

import csv
import itertools
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import matthews_corrcoef
from sklearn.model_selection import cross_val_predict, cross_val_score
from sklearn.preprocessing import StandardScaler

from eval import geometry as geo
from eval.config import ReferenceSwitches, SuiteConfig
from eval.embed import encode, load_encoder
from eval.pooling import RandomAttentionPooler, mean, pool_texts, reference_poolers, weighted
from eval.probes import ReferenceProbeSettings, dev_cv_probe, fit_reference_probe
from eval.report import read_run, write_run
from eval.suite import COLUMNS, SuiteResult, headline_metrics, result_metrics, run_suite
from eval.tasks import TASKS, joint_texts, load_task
from models import build_encoder, export_encoder
from models.config import ModelConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, dropout=0.0)
# Small enough for 2 cores: 120 analysed dev rows, 5 probe epochs, 3 random attention draws.
REF = SuiteConfig(tasks=("sst2", "stsb"), poolings=("mean", "weighted", "attention"), max_train=150, max_dev=120,
                  n_boot=30, n_boot_spectral=10, protocol="reference", attention_draws=3, reference_n=120,
                  reference_max_epochs=5)


def _tiny(path: Path, tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    return export_encoder(build_encoder(TINY), path, tokenizer)


@pytest.fixture(scope="module")
def tiny_a(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny") / "tiny-a", tokenizer, 0)


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny") / "tiny-b", tokenizer, 1)


@pytest.fixture(scope="module")
def reference_run(tiny_a: Path, glue_dir: Path) -> SuiteResult:
    return run_suite(tiny_a, glue_dir=glue_dir, cfg=REF, name="tiny-a")


@pytest.fixture(scope="module")
def reference(reference_run: SuiteResult) -> pd.DataFrame:
    return reference_run.results


# ---------------------------------------------------------------- poolings


def _padded(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(4, 9, 16, generator=gen)
    mask = torch.arange(9)[None, :] < torch.tensor([3, 9, 1, 6])[:, None]
    return h, mask


def test_weighted_pooling_is_softmax_over_untrained_ones_which_is_the_mean():
    """WeightedMeanPooling: softmax of nn.Parameter(torch.ones(L)) masked to -inf at pads, never trained."""
    h, mask = _padded()
    w = torch.ones(9).expand(4, -1).masked_fill(~mask, float("-inf")).softmax(1)
    reference = (h * w.unsqueeze(-1)).sum(1)
    [pooler] = reference_poolers("weighted", 16, weighted_is_mean=True, attention_untrained=True, draws=5)
    torch.testing.assert_close(pooler(h, mask), reference)
    torch.testing.assert_close(mean(h, mask), reference)
    [off] = reference_poolers("weighted", 16, weighted_is_mean=False, attention_untrained=True, draws=5)
    assert off is None and not torch.allclose(weighted(h, mask), reference)  # off: the harness's 1..n weights


def test_random_attention_is_the_reference_pooler_at_a_seeded_draw():
    """AttentionPooling: q = randn(d), key = Linear(d, d, bias=False) Xavier-uniform, einsum('d,bld->bl', q, key(h))
    / sqrt(d), masked softmax; draw k of width d depends on (k, d) only, and draws differ."""
    h, mask = _padded()
    draws = reference_poolers("attention", 16, weighted_is_mean=True, attention_untrained=True, draws=3)
    assert [p.draw for p in draws] == [0, 1, 2]
    key = torch.nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        key.weight.copy_(draws[1].key)
        scores = torch.einsum("d,bld->bl", draws[1].query, key(h)) / 16**0.5
    w = scores.masked_fill(~mask, float("-inf")).softmax(1)
    torch.testing.assert_close(draws[1](h, mask), (h * w.unsqueeze(-1)).sum(1))
    again = RandomAttentionPooler(16, 1)
    assert torch.equal(again.query, draws[1].query) and torch.equal(again.key, draws[1].key)
    assert not torch.allclose(draws[0](h, mask), draws[1](h, mask))
    assert not torch.equal(RandomAttentionPooler(32, 1).query[:16], draws[1].query)
    bound = (6 / 32) ** 0.5  # xavier_uniform_ of a 16 x 16 weight
    assert draws[0].key.abs().max() <= bound and draws[0].key.abs().max() > 0.9 * bound
    assert reference_poolers("attention", 16, True, attention_untrained=False, draws=3) is None  # off: train one


# ---------------------------------------------------------------- encoding


def test_pairs_become_one_text_with_a_real_sep_token(tokenizer):
    df = pd.DataFrame({"text_a": ["A man plays.", "Two dogs"], "text_b": ["Someone plays music", "run."]})
    assert joint_texts(df) == ["A man plays. [SEP] Someone plays music", "Two dogs [SEP] run."]
    ids = tokenizer(joint_texts(df)[0])["input_ids"]
    s1 = tokenizer("A man plays.", add_special_tokens=False)["input_ids"]
    s2 = tokenizer("Someone plays music", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.cls_token_id, *s1, tokenizer.sep_token_id, *s2, tokenizer.sep_token_id]


def test_without_attention_mask_the_real_tokens_attend_to_the_padding(tiny_a: Path):
    """attend_padding replays `encoder(input_ids)` on texts padded to max_length: the kept states are those of the
    real tokens of that call, and they differ from the masked encoding."""
    model, tok = load_encoder(tiny_a)
    texts = ["a fine film .", "an overlong , self-indulgent mess of a movie that goes on and on"]
    ours = encode(model, tok, texts, max_len=32, attend_padding=True)
    enc = tok(texts, max_length=32, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"]).last_hidden_state  # no attention mask, as the reference
    for i in range(len(texts)):
        real = enc["input_ids"][i] != tok.pad_token_id
        np.testing.assert_allclose(ours.states[ours.offsets[i]: ours.offsets[i + 1]], hidden[i][real].numpy(),
                                   atol=1e-5)
    masked = encode(model, tok, texts, max_len=32)
    assert np.array_equal(masked.input_ids, ours.input_ids)
    assert not np.allclose(masked.states, ours.states, atol=1e-3)


# ---------------------------------------------------------------- geometry


def test_alignment_pow4_is_the_per_class_mean_of_fourth_powers():
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    labels[0] = 7  # a class of one: no pair, skipped
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    per_class = [np.mean([np.sum((x_hat[i] - x_hat[j]) ** 2) ** 2
                          for i, j in itertools.combinations(np.flatnonzero(labels == c), 2)])
                 for c in np.unique(labels) if (labels == c).sum() >= 2]
    assert geo.alignment_pow4(x, labels) == pytest.approx(np.mean(per_class), rel=1e-10)
    keep = rng.random(40) < 0.7
    assert geo.alignment_pow4(x, labels, keep.astype(float)) == pytest.approx(
        geo.alignment_pow4(x[keep], labels[keep]), rel=1e-10)
    assert geo.alignment_same_label(x, labels) != pytest.approx(geo.alignment_pow4(x, labels))


@pytest.mark.parametrize("n", [300, 40])  # N > d and N < d (MRPC-like: the normaliser is log N)
def test_reference_spectrum_metrics_against_a_direct_svd(n: int):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 64)) @ rng.standard_normal((64, 64)) + 3.0
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 1e-12]
    eig = s**2
    m = geo.reference_spectral_metrics(x)
    assert m["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    assert m["spectral_entropy"] == pytest.approx(scipy_entropy(eig / eig.sum()) / np.log(min(n, 64)), rel=1e-8)
    assert m["stable_rank"] == pytest.approx(eig.sum() / eig[0], rel=1e-10)
    assert m["rank_90"] == np.searchsorted(np.cumsum(eig) / eig.sum(), 0.90) + 1
    raw = np.linalg.svd(x, compute_uv=False)
    q = raw / raw.sum()
    off = geo.reference_spectral_metrics(x, erank_centered=False, entropy_min_nd=False)
    assert off["effective_rank"] == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-10)  # RankMe, raw
    assert off["spectral_entropy"] == pytest.approx(scipy_entropy(eig / eig.sum()) / np.log(64), rel=1e-8)
    keep = (rng.random(n) < 0.8).astype(float)  # resample weights: 0/1 weights equal the subset
    sub = geo.reference_spectral_metrics(x[keep > 0])
    weighted_ = geo.reference_spectral_metrics(x, np.stack([keep, keep]))
    for name in ("effective_rank", "stable_rank"):
        assert weighted_[name] == pytest.approx([sub[name]] * 2, rel=1e-5), name


def test_a_mean_shift_alone_moves_uniformity_from_minus_3_9_to_minus_0_15_but_not_the_centred_value():
    """Why uniformity_centered stands beside uniformity: adding one vector to every embedding (nothing else changes)
    takes an isotropic cloud's uniformity from about -3.9 to about -0.15; the centred value does not move."""
    x = np.random.default_rng(2).standard_normal((1000, 384))
    shifted = x + 5.0
    assert -4.0 < geo.uniformity(x) < -3.8
    assert -0.2 < geo.uniformity(shifted) < -0.1
    assert geo.uniformity(shifted, centered=True) == pytest.approx(geo.uniformity(x, centered=True), abs=1e-6)


def test_reference_token_probe_against_sklearn_directly():
    """Targets: most frequent non-special id, ties to the smallest, 0 without tokens; classes < 5 dropped; 3-fold
    unshuffled cross_val_score of a saga LogisticRegression on StandardScaler-ed rows."""
    special = {0, 101, 102}
    assert geo.reference_lexical_targets([[101, 9, 7, 9, 7, 5, 102], [4, 3], [101, 102], [8, 8, 3]],
                                         special).tolist() == [7, 3, 0, 8]
    rng = np.random.default_rng(3)
    targets = np.concatenate([rng.integers(10, 14, 90), [50, 50, 51]])  # classes 50, 51: fewer than 5 rows
    x = np.eye(60)[targets % 60] * 2 + rng.standard_normal((93, 60))
    r = geo.reference_token_probe(x, targets, seed=0)
    kept = ~np.isin(targets, [50, 51])
    assert np.array_equal(r["kept"], kept)
    clf = LogisticRegression(C=1.0, solver="saga", max_iter=500, random_state=0)
    expected = cross_val_score(clf, StandardScaler().fit_transform(x[kept]), targets[kept], cv=3)
    np.testing.assert_allclose(r["fold_acc"], expected)
    assert r["fold_majority"].mean() < r["fold_acc"].mean()


def test_dev_cv_probe_against_sklearn_directly():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((120, 8))
    y = (x[:, 0] + 0.5 * rng.standard_normal(120) > 0).astype(int)
    xs = StandardScaler().fit_transform(x)
    clf = LogisticRegression(C=1.0, solver="saga", max_iter=500, random_state=0)
    r = dev_cv_probe(x, y, regression=False, seed=0)
    np.testing.assert_allclose(r.fold_acc, cross_val_score(clf, xs, y, cv=5))
    assert matthews_corrcoef(y, r.pred) == pytest.approx(matthews_corrcoef(y, cross_val_predict(clf, xs, y, cv=5)))
    score = x[:, 1] * 2 + rng.standard_normal(120)
    reg = dev_cv_probe(x, score, regression=True)
    assert spearmanr(score, reg.pred)[0] == pytest.approx(spearmanr(score, cross_val_predict(Ridge(), xs, score,
                                                                                             cv=5))[0])


# ---------------------------------------------------------------- probes: selection on dev


def test_the_reference_probe_reports_the_best_dev_epoch_which_is_above_chance_on_pure_noise():
    """Constructed cases with no signal at all (random vectors, random labels): the reference reports the best of 20
    dev scores (the epoch is chosen on dev), which sits above chance on average; the last epoch (the switch off)
    does not; and the dev labels alone decide which epoch is reported."""
    settings = ReferenceProbeSettings(lr=1e-2, batch_size=32, epochs=20, dropout=0.2, source="constructed")
    best, last = [], []
    for case in range(5):
        rng = np.random.default_rng(case)
        train = (rng.standard_normal((400, 16)).astype(np.float32), None, rng.integers(0, 2, 400))
        dev = (rng.standard_normal((200, 16)).astype(np.float32), None, rng.integers(0, 2, 200))
        on = fit_reference_probe(TASKS["sst2"], train, dev, settings, ReferenceSwitches(), seed=0)
        off = fit_reference_probe(TASKS["sst2"], train, dev, settings,
                                  ReferenceSwitches.off("probe_best_epoch_on_dev"), seed=0)
        acc = (on.dev_pred == dev[2]).mean()
        assert acc == max(on.history) and on.epoch == int(np.argmax(on.history)) + 1
        assert on.history == off.history  # the same training; only the reporting differs
        assert off.epoch == 20 and (off.dev_pred == dev[2]).mean() == off.history[-1]
        best.append(acc)
        last.append(off.history[-1])
        if case == 0:
            relabelled = (dev[0], None, 1 - dev[2])  # the same training, other dev labels
            flipped = fit_reference_probe(TASKS["sst2"], train, relabelled, settings, ReferenceSwitches(), seed=0)
            assert flipped.epoch != on.epoch
    assert np.mean(best) > np.mean(last) + 0.02 and np.mean(best) > 0.52  # the max of 20 noisy dev scores


def test_stsb_reference_probe_is_a_scaled_cosine():
    rng = np.random.default_rng(6)
    u, v = rng.standard_normal((2, 150, 8)).astype(np.float32)
    y = rng.uniform(0, 5, 150)
    settings = ReferenceProbeSettings(lr=1e-3, batch_size=128, epochs=1, dropout=0.1, source="constructed")
    r = fit_reference_probe(TASKS["stsb"], (u, v, y), (u, v, y), settings, ReferenceSwitches())
    ln = torch.nn.functional.layer_norm
    cos = torch.cosine_similarity(ln(torch.as_tensor(u), (8,)), ln(torch.as_tensor(v), (8,)), dim=-1).numpy()
    # one epoch of lr 1e-3 barely moves the LayerNorm: the ranking is the zero-shot cosine's
    assert spearmanr(r.dev_pred, cos)[0] > 0.99


# ---------------------------------------------------------------- the engine, end to end


def test_reference_rows_replay_the_reference_and_say_so(reference: pd.DataFrame):
    res = reference
    assert list(res.columns) == COLUMNS and set(res.protocol) == {"reference"}
    assert set(res.family) == {"probe", "geom", "devcv"}
    assert not res.duplicated(["task", "pooling", "family", "metric"]).any()
    geom = set(res[res.family == "geom"].metric)
    assert {"uniformity", "uniformity_centered", "alignment", "effective_rank", "spectral_entropy", "stable_rank",
            "rank_90", "class_distance_ratio", "lexical_acc", "lexical_majority"} <= geom
    assert "class_distance_ratio" in set(res[(res.task == "stsb") & (res.family == "geom")].metric)  # 5 score bins
    assert res[res.family.isin(["probe", "devcv"]) & ~res.metric.str.endswith("_draw_std")].note.str.contains(
        "SELECTED ON DEV").all()
    assert res[res.family == "geom"].note.str.contains("first 120 dev rows in file order").all()
    analysis = res[res.family.isin(["geom", "devcv"])]
    assert analysis[analysis.task == "stsb"].note.str.contains("one text s1 \\[SEP\\] s2").all()
    assert res[(res.task == "stsb") & (res.family == "probe")].note.str.contains("s1, s2 encoded separately").all()
    assert res.note.str.contains("no attention mask").all()
    for family in ("probe", "geom", "devcv"):  # weighted = mean exactly: same vectors, same resamples
        w = res[(res.pooling == "weighted") & (res.family == family)].set_index(["task", "metric"])
        m = res[(res.pooling == "mean") & (res.family == family)].set_index(["task", "metric"])
        pd.testing.assert_series_equal(w.value, m.value.loc[w.index])
    att = res[res.pooling == "attention"]
    stds = att[att.metric.str.endswith("_draw_std")]
    assert len(stds) == len(att) / 2 and (stds.value > 0).any()
    assert att[~att.metric.str.endswith("_draw_std")].note.str.contains("mean of 3 untrained random attention").all()


def test_reference_tables_write_plot_and_read_back(reference_run: SuiteResult, tmp_path: Path):
    write_run(reference_run.results, reference_run.replicates, reference_run.spectra, tmp_path / "run")
    results, replicates, spectra = read_run(tmp_path / "run")
    pd.testing.assert_frame_equal(results, reference_run.results)
    assert set(replicates.protocol) == set(spectra.protocol) == {"reference"}
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} == {
        "eigen_spectra.png", "alignment_uniformity.png", "heatmap_mean.png", "heatmap_weighted.png",
        "heatmap_attention.png"}


def test_reference_metric_names_carry_the_prefix(reference: pd.DataFrame):
    metrics, headline = result_metrics(reference), headline_metrics(reference)
    assert len(metrics) == len(reference) and all(k.startswith("ref/") for k in metrics)
    assert "ref/geom/sst2/attention/uniformity" in metrics and "ref/devcv/sst2/mean/acc" in metrics
    assert "ref/geom/sst2/attention/uniformity_draw_std" in metrics
    main = reference[(reference.family == "probe") & reference.metric.isin(["acc", "spearman"])]
    assert headline["ref/probe/mean_score"] == pytest.approx(main.value.mean())
    assert "select/mean_score" not in headline and "ref/select/mean_score" not in headline


def test_attention_draws_are_shared_by_encoders_of_one_width_and_repeat(reference: pd.DataFrame, tiny_a: Path,
                                                                        tiny_b: Path, glue_dir: Path):
    """For two different encoders of width 64 the engine's attention uniformity is the mean over the draws
    RandomAttentionPooler(64, k), k < K, recomputed here by hand: the same K draws for both (a paired comparison),
    and a second run repeats every value."""
    cfg = replace(REF, tasks=("sst2",), poolings=("attention",))
    b = run_suite(tiny_b, glue_dir=glue_dir, cfg=cfg, name="tiny-b").results
    texts = load_task("sst2", glue_dir).dev["text_a"].iloc[:120].tolist()  # the first 120 dev rows
    for encoder, res in ((tiny_a, reference), (tiny_b, b)):
        model, tok = load_encoder(encoder)
        states = encode(model, tok, texts, max_len=128, attend_padding=True)
        per_draw = [geo.uniformity(pool_texts(states, "attention", RandomAttentionPooler(64, k)).astype(np.float64))
                    for k in range(3)]
        row = res[(res.task == "sst2") & (res.pooling == "attention") & (res.family == "geom")].set_index("metric")
        assert row.value["uniformity"] == pytest.approx(np.mean(per_draw), rel=1e-5)
        assert row.value["uniformity_draw_std"] == pytest.approx(np.std(per_draw, ddof=1), rel=1e-4)
    again = run_suite(tiny_b, glue_dir=glue_dir, cfg=cfg, name="tiny-b").results
    pd.testing.assert_frame_equal(again, b)


def test_switches_off_give_the_harness_behaviour_for_that_aspect(tiny_a: Path, glue_dir: Path):
    """Every switch off: weighted is the position-weighted mean again, no dev-CV rows, the last probe epoch, one
    (trained) attention pooler, pairs embedded alone; the suite still measures every metric."""
    cfg = replace(REF, tasks=("stsb",), poolings=("mean", "weighted", "attention"),
                  switches=ReferenceSwitches.off(*ReferenceSwitches.names()))
    res = run_suite(tiny_a, glue_dir=glue_dir, cfg=cfg, name="tiny-a").results
    assert set(res.family) == {"probe", "geom"} and not res.metric.str.endswith("_draw_std").any()
    assert not res.note.str.contains("SELECTED ON DEV").any() and res.note.str.contains("last of 5 epochs").any()
    assert res[res.family == "geom"].note.str.contains("sentences embedded alone").all()
    assert res.note.str.contains("attention masks").all()
    geom = res[res.family == "geom"].set_index(["pooling", "metric"]).value
    assert geom["weighted", "uniformity"] != geom["mean", "uniformity"]
    assert "class_distance_ratio" not in set(res.metric)  # the harness's ratio skips regression tasks
    alignment = res[(res.metric == "alignment") & (res.pooling == "mean")]
    assert alignment.note.str.contains("score >= 4").all()  # the harness's positives: (s1, s2) with score >= 4


def test_selection_rows_come_from_train_never_from_dev(tiny_a: Path, glue_dir: Path, tmp_path: Path):
    """Harness protocol: a GLUE copy whose dev split has shuffled labels changes the dev scores (probe/*) but not
    one `select` row (the held-out 20% of train the probe's L2 and epochs were chosen on)."""
    cfg = SuiteConfig(tasks=("sst2",), poolings=("mean", "attention"), max_train=200, max_dev=150, n_boot=30,
                      n_boot_spectral=10)
    shutil.copytree(glue_dir / "SST-2", tmp_path / "SST-2")
    dev = pd.read_csv(tmp_path / "SST-2" / "dev.tsv", sep="\t", dtype=str, keep_default_na=False,
                      quoting=csv.QUOTE_NONE)
    lines = (tmp_path / "SST-2" / "dev.tsv").read_text().splitlines()
    labels = np.random.default_rng(0).permutation(dev["label"].to_numpy())
    (tmp_path / "SST-2" / "dev.tsv").write_text("\n".join(
        [lines[0]] + [f"{line.rsplit(chr(9), 1)[0]}\t{lab}" for line, lab in zip(lines[1:], labels, strict=True)])
        + "\n")
    real = run_suite(tiny_a, glue_dir=glue_dir, cfg=cfg, name="tiny-a").results
    shuffled = run_suite(tiny_a, glue_dir=tmp_path, cfg=cfg, name="tiny-a").results
    pick = ["task", "pooling", "metric", "value", "ci_low", "ci_high", "n", "note"]
    sel_real, sel_shuffled = (r[r.family == "select"][pick].reset_index(drop=True) for r in (real, shuffled))
    assert len(sel_real) == 2
    pd.testing.assert_frame_equal(sel_real, sel_shuffled)
    probe_real, probe_shuffled = (r[r.family == "probe"].value.to_numpy() for r in (real, shuffled))
    assert not np.allclose(probe_real, probe_shuffled)

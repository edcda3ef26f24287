"""studies/paper/claims.yaml: the paper's published numbers, as data the harness can match to its own results."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval.geometry import spectral_metrics
from eval.pooling import POOLINGS
from eval.scores import SCORES
from eval.tasks import TASKS

CLAIMS = Path(__file__).resolve().parents[1] / "studies" / "paper" / "claims.yaml"
REQUIRED = ("claim", "task", "pooling", "metric", "arm", "value", "scale", "source")
ARMS = {"hybrid", "mlm"}
SCALES = {"percent", "fraction", "raw"}
# Metrics the suite emits besides the probe scores and the spectrum metrics (eval.suite._geometry, lexical probe).
OTHER_GEOM = {"uniformity", "uniformity_centered", "mean_cosine", "alignment", "class_distance_ratio",
              "lexical_acc", "lexical_majority"}


@pytest.fixture(scope="module")
def claims() -> dict:
    return yaml.safe_load(CLAIMS.read_text())


@pytest.fixture(scope="module")
def harness_metrics() -> set[str]:
    spectral = spectral_metrics(np.random.default_rng(0).normal(size=(32, 8)))
    return set(SCORES) | set(spectral) | OTHER_GEOM


def lookup(values: list[dict], **key) -> list[dict]:
    return [v for v in values if all(v.get(k) == x for k, x in key.items())]


def one(values: list[dict], **key) -> float:
    hits = lookup(values, **key)
    assert len(hits) == 1, f"{key}: {len(hits)} entries"
    return hits[0]["value"]


def test_every_value_is_complete_and_uses_harness_names(claims, harness_metrics):
    values = claims["values"]
    assert len(values) > 300
    listed = {f["path"] for f in claims["source"]["files"]}
    for v in values:
        missing = [k for k in REQUIRED if k not in v]
        assert not missing, f"{v}: missing {missing}"
        assert v["task"] in TASKS, v
        assert v["pooling"] in POOLINGS, v
        assert v["metric"] in harness_metrics, v
        assert v["arm"] in ARMS, v
        assert v["scale"] in SCALES, v
        assert isinstance(v["value"], int | float) and math.isfinite(v["value"]), v
        if v["scale"] == "percent":
            assert 0 <= v["value"] <= 100, v
        if v["scale"] == "fraction":
            assert -1 <= v["value"] <= 1, v
        assert v["source"].split(",")[0].strip() in listed, f"source file not listed under source.files: {v}"


def test_values_are_unique_per_key(claims):
    keys = Counter((v["claim"], v["task"], v["pooling"], v["metric"], v["arm"], v.get("selection"))
                   for v in claims["values"])
    assert [k for k, n in keys.items() if n > 1] == []


def test_reference_differences_are_documented(claims):
    """A value whose reference metric differs from ours keeps the reference name and says how in a note."""
    for v in claims["values"]:
        if v["claim"].startswith("representation_analysis"):
            assert v.get("reference_metric") and v.get("note"), v
    for v in claims["reference_only_values"]:
        assert "metric" not in v and v["reference_metric"] and v["source"], v
        assert v["arm"] in ARMS and v["task"] in TASKS, v
    for name, d in claims["metric_definitions"].items():
        assert d["note"] and d["harness_metric"], name


def test_probe_table_as_published(claims):
    values = lookup(claims["values"], claim="probe_table")
    published = {("sst2", "acc"): (67.55, 68.69), ("mrpc", "f1"): (63.09, 59.84),
                 ("mnli", "acc"): (50.82, 51.36), ("stsb", "spearman"): (0.281, 0.283)}
    for (task, metric), (hybrid, mlm) in published.items():
        assert one(values, task=task, metric=metric, arm="hybrid") == hybrid
        assert one(values, task=task, metric=metric, arm="mlm") == mlm
    assert {v["scale"] for v in values if v["task"] != "stsb"} == {"percent"}
    assert {v["scale"] for v in values if v["task"] == "stsb"} == {"fraction"}
    # The README's MRPC row is the QQP run: it says so, and the MRPC logs are recorded beside it.
    assert all("QQP" in v["disagreement"] for v in lookup(values, task="mrpc"))
    logs = lookup(claims["values"], claim="probe_logs", task="mrpc", metric="f1", selection="best_epoch_on_dev")
    assert sorted(v["value"] for v in logs) == [0.8273, 0.8346]
    qqp = lookup(claims["other_outputs"], claim="qqp_probe", metric="f1", selection="best_epoch_on_dev")
    assert sorted(v["value"] for v in qqp) == [0.5984, 0.6309]


def test_uniformity_table_as_published(claims):
    values = lookup(claims["values"], claim="readme_uniformity_table", pooling="attention", metric="uniformity")
    for task, hybrid, mlm in (("sst2", -0.448, -0.055), ("cola", -0.955, -0.083), ("stsb", -0.577, -0.069)):
        assert one(values, task=task, arm="hybrid") == hybrid
        assert one(values, task=task, arm="mlm") == mlm
        raw = lookup(claims["values"], claim="representation_analysis", task=task, pooling="attention",
                     metric="uniformity")
        assert {v["arm"]: round(v["value"], 3) for v in raw} == {"hybrid": hybrid, "mlm": mlm}


def test_headline_claims(claims):
    by_id = {c["id"]: c for c in claims["claims"]}
    head = by_id["uniformity_headline"]
    assert head["paper"] == {"hybrid": -0.16, "mlm": -0.05}
    assert head["metric"] == "uniformity" and head["direction"] == "lower_is_better"
    ratio = by_id["uniformity_ratio"]["paper"]
    assert (ratio["ratio_min"], ratio["ratio_max"]) == (5, 10)
    assert by_id["richer_spectra"]["pooling"] == "max" and by_id["richer_spectra"]["primary_metric"] == "effective_rank"
    assert by_id["less_lexical"]["metric"] == "lexical_acc"
    for c in by_id.values():
        assert c["text"] and c["source"] and c["raw_check"], c["id"]


def test_raw_analysis_grid_is_complete(claims):
    raw = lookup(claims["values"], claim="representation_analysis")
    cells = {(v["task"], v["pooling"], v["arm"]) for v in raw}
    assert len(cells) == 5 * 4 * 2
    for task in TASKS:
        for pooling in ("mean", "max", "weighted", "attention"):
            for arm in ARMS:
                got = {v["metric"] for v in lookup(raw, task=task, pooling=pooling, arm=arm)}
                assert {"uniformity", "alignment", "effective_rank", "spectral_entropy", "stable_rank",
                        "lexical_acc"} <= got, (task, pooling, arm)


def test_claims_agree_with_the_raw_values(claims):
    """The summaries under `claims` are recomputable from `values`."""
    by_id = {c["id"]: c for c in claims["claims"]}
    raw = lookup(claims["values"], claim="representation_analysis", metric="uniformity")
    for pooling, ratios in by_id["uniformity_ratio"]["raw_ratios"].items():
        for task, ratio in ratios.items():
            h = one(raw, task=task, pooling=pooling, arm="hybrid")
            m = one(raw, task=task, pooling=pooling, arm="mlm")
            assert round(h / m, 2) == ratio, (task, pooling)
            assert h < m
    cell = by_id["uniformity_headline"]["best_matching_cell"]
    assert one(raw, task=cell["task"], pooling=cell["pooling"], arm="hybrid") == cell["hybrid"]
    assert one(raw, task=cell["task"], pooling=cell["pooling"], arm="mlm") == cell["mlm"]
    lexical = lookup(claims["values"], claim="representation_analysis", metric="lexical_acc")
    fewer = sum(one(lexical, task=t, pooling=p, arm="hybrid") < one(lexical, task=t, pooling=p, arm="mlm")
                for t in TASKS for p in ("mean", "max", "weighted", "attention"))
    assert fewer == 19  # as raw_check of less_lexical says

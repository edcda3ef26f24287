"""The grid studies' smoke settings end to end (slow): compare_objectives and scaling on real Ray, data and MLflow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness import tracking
from studies import compare_objectives, scaling

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def test_compare_objectives_smoke_is_compute_matched_and_reports_paired_tests(tmp_path: Path) -> None:
    assert compare_objectives.main(["--config", "studies/configs/tiny.yaml", "--smoke", f"output_dir={tmp_path}"]) == 0
    report = tmp_path / "studies" / "compare_objectives_smoke" / "report"
    summary = pd.read_csv(report / "summary.csv")
    assert set(summary["label"]) == {"mlm-s0", "hybrid-s0"} and (summary["outcome"] == "finished").all()
    # compute-matched: mlm steps x its FLOPs per step == hybrid's 20 steps x its FLOPs per step (to one step)
    steps = dict(zip(summary["label"], summary["steps"], strict=True))
    assert steps["hybrid-s0"] == 20 and steps["mlm-s0"] > 20
    comparison = pd.read_csv(report / "comparison.csv")
    assert {"encoder_a", "encoder_b", "p_holm", "significant"} <= set(comparison.columns) and len(comparison) > 0
    assert "## Paired tests" in (report / "report.md").read_text()
    between = pd.read_csv(report / "seed_tests.csv")  # one seed per objective here: no p-value, but the rows
    assert {"arm_a", "arm_b", "p_welch", "p_permutation", "p_holm"} <= set(between.columns) and len(between) > 0


def test_scaling_smoke_fits_power_laws_against_compute(tmp_path: Path) -> None:
    assert scaling.main(["--config", "studies/configs/tiny.yaml", "--smoke", f"output_dir={tmp_path}"]) == 0
    study = tmp_path / "studies" / "scaling_smoke"
    fits = pd.read_csv(study / "report" / "power_laws.csv")
    assert set(fits["objective"]) == {"mlm", "hybrid"}
    assert set(fits["quantity"]) == {"val/loss_mlm", "probe_error"}
    assert (fits["points"] == 2).all()
    loss = fits[fits["quantity"] == "val/loss_mlm"]
    assert (loss["b"] < 0).all()  # more compute, lower validation loss, for both objectives
    assert (study / "report" / "plots" / "scaling.png").stat().st_size > 0
    uri = tracking.default_uri(tmp_path)
    import json

    parent = json.loads((study / "study.json").read_text())["parent_run_id"]
    assert len(tracking.child_runs(uri, parent)) == 4
    # Without early stopping, a finished trial's process runs a later trial (Tune's reuse_actors): 4 trials, 2 at a
    # time, in fewer than 4 processes.
    results = [json.loads(line) for f in (study / "tune").rglob("result.json") for line in f.read_text().splitlines()]
    assert len({r["trial_id"] for r in results}) == 4 and len({r["pid"] for r in results}) < 4

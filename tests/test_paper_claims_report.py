"""The claims report (harness.claims) from child runs in a real MLflow sqlite store, without Ray: per-seed values
of both protocols read back, the seed-level tests, the verdicts of constructed outcomes, λ trajectories, and the
report files (markdown, CSV, and HTML with its plots inlined)."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import tracking
from harness.claims import (
    PARITY_MARGIN,
    checks,
    claims_report,
    direction_verdict,
    load_claims,
    parse_metric,
    seed_tests,
)
from harness.study_report import StudyResult

TASKS, POOLINGS = ("sst2", "stsb", "mrpc"), ("mean", "max", "cls")


def test_metric_names_of_both_protocols_parse() -> None:
    assert parse_metric("ref/geom/sst2/attention/uniformity") == ("reference", "geom", "sst2", "attention",
                                                                  "uniformity")
    assert parse_metric("probe/stsb/mean/spearman") == ("harness", "probe", "stsb", "mean", "spearman")
    for other in ("select/sst2/mean/acc", "probe/mean_score", "train/lambda", "geom/mean_uniformity"):
        assert parse_metric(other) is None


def test_semantic_lexical_gap_uses_the_dev_cv_probe_where_the_protocol_has_one() -> None:
    from harness.claims import GAP, seed_values

    run = {"tags": {"outcome": "finished", "group": "hybrid"}, "params": {"seed": "1"},
           "metrics": {"ref/devcv/sst2/mean/acc": 0.9, "ref/probe/sst2/mean/acc": 0.7,
                       "ref/geom/sst2/mean/lexical_acc": 0.3, "probe/sst2/mean/acc": 0.8,
                       "geom/sst2/mean/lexical_acc": 0.2, "select/sst2/mean/acc": 0.1}}
    tidy = seed_values([run])
    gap = tidy[tidy["metric"] == GAP].set_index("protocol")["value"]
    assert gap["reference"] == pytest.approx(0.6) and gap["harness"] == pytest.approx(0.6)
    assert set(tidy["family"]) == {"devcv", "probe", "geom", "derived"} and (tidy["seed"] == 1).all()


def test_seed_level_tests_welch_permutation_and_holm() -> None:
    rng = np.random.default_rng(0)
    means = {("uniformity", "hybrid"): -1.0, ("uniformity", "mlm"): 0.5, ("acc", "hybrid"): 0.7, ("acc", "mlm"): 0.7}
    rows = [{"arm": arm, "seed": s, "task": "sst2", "pooling": "mean", "family": "geom" if m != "acc" else "probe",
             "metric": m, "protocol": "harness", "value": mean + 0.01 * rng.normal()}
            for (m, arm), mean in means.items() for s in range(4)]
    tests = seed_tests(pd.DataFrame(rows), "hybrid", "mlm").set_index("metric")
    big = tests.loc["uniformity"]
    assert big["diff"] == pytest.approx(-1.5, abs=0.05) and big["p_welch"] < 1e-4 and big["significant"]
    assert big["p_permutation"] == pytest.approx(2 / 70)  # K = 4: the smallest two-sided exact p
    assert big["p_holm"] == pytest.approx(min(1.0, 2 * big["p_welch"]))  # Holm on Welch, two tests
    assert big["diff_ci_low"] < big["diff"] < big["diff_ci_high"] < 0
    assert not tests.loc["acc", "significant"]


def test_verdict_rule_on_constructed_cells() -> None:
    def cells(diffs, significant, a=-1.0):
        return pd.DataFrame({"diff": diffs, "significant": significant, "mean_a": [a] * len(diffs),
                             "mean_b": [a - d for d in diffs], "p_welch": [0.5] * len(diffs)})

    assert direction_verdict(cells([-0.5, -0.3], [True, True]), -1) == "reproduced"
    assert direction_verdict(cells([-0.5, -0.3], [True, False]), -1) == "not reproduced"
    assert direction_verdict(cells([0.5, -0.1], [True, False]), -1) == "reversed"
    assert direction_verdict(cells([0.5, -0.3], [True, True]), -1) == "not reproduced"
    assert direction_verdict(cells([], []), -1) == "not measured"
    one_seed = cells([-0.5], [False]).assign(p_welch=float("nan"))
    assert direction_verdict(one_seed, -1).startswith("not tested")
    # ratio claims: hybrid/MLM of the seed means must lie in the bounds too (here 2x, 6x)
    ratios = pd.DataFrame({"diff": [-1.0, -5.0], "significant": [True, True], "mean_a": [-2.0, -6.0],
                           "mean_b": [-1.0, -1.0], "p_welch": [1e-6, 1e-6]})
    assert direction_verdict(ratios, -1, (5, 10)) == "not reproduced"
    assert direction_verdict(ratios.iloc[1:], -1, (5, 10)) == "reproduced"


def test_every_claim_has_a_check() -> None:
    found = {c.claim["id"]: c for c in checks(load_claims())}
    assert {c.kind for c in found.values()} <= {"direction", "ratio", "parity", "lambda", "compute"}
    assert found["probe_parity"].cells == (("sst2", "mean", "acc"), ("mrpc", "cls", "f1"), ("mnli", "mean", "acc"),
                                           ("stsb", "mean", "spearman"))
    assert found["uniformity_ratio"].bounds == (5, 10) and found["uniformity_headline"].direction == -1
    assert "uniformity_centered" in found["uniformity_headline"].also
    assert found["richer_spectra"].pooling == "max" and found["richer_spectra"].direction == 1


def _log_study(uri: str, seeds: int = 3) -> str:
    """A parent run and finished child runs of hybrid, hybrid_fixed and mlm: hybrid clearly more uniform (both
    protocols), equal probe scores, lexical accuracy HIGHER for the hybrid (the claim reversed), and a learned λ
    that drifts with the learning rate."""
    rng = np.random.default_rng(1)
    with tracking.training_run(uri, "claims-test", "study", {}, tags={"kind": "study"}) as parent:
        pass
    for arm in ("hybrid", "hybrid_fixed", "mlm"):
        for seed in range(seeds):
            params = {"seed": seed, "objective": {"name": "mlm" if arm == "mlm" else "hybrid",
                                                  "weighting": "fixed" if arm == "hybrid_fixed" else "learned",
                                                  "lambda_init": 0.5},
                      "optim": {"lr": 1e-2, "warmup_steps": 2, "max_steps": 20, "min_lr_ratio": 0.0}}
            tags = {"label": f"{arm}-s{seed}", "group": arm}
            with tracking.training_run(uri, "claims-test", f"{arm}-s{seed}", params, parent.run_id, tags) as run:
                metrics = {}
                for prefix in ("", "ref/"):
                    for task in TASKS:
                        for pooling in POOLINGS:
                            noise = 0.005 * rng.normal(size=4)
                            uniform = (-3.0 if arm != "mlm" else -0.5) + noise[0]
                            metrics[f"{prefix}geom/{task}/{pooling}/uniformity"] = uniform
                            metrics[f"{prefix}geom/{task}/{pooling}/uniformity_centered"] = uniform - 0.1
                            metrics[f"{prefix}geom/{task}/{pooling}/lexical_acc"] = \
                                (0.6 if arm != "mlm" else 0.4) + noise[1]
                            metrics[f"{prefix}geom/{task}/{pooling}/effective_rank"] = 30 + noise[2]
                            main = {"sst2": "acc", "stsb": "spearman", "mrpc": "f1"}[task]
                            metrics[f"{prefix}probe/{task}/{pooling}/{main}"] = 0.7 + 0.5 * PARITY_MARGIN * noise[3]
                metrics["select/mean_score"] = 0.5
                tracking.log_metrics(metrics)
                if arm != "mlm":
                    for step in (5, 10, 15, 20):
                        lam = 0.5 if arm == "hybrid_fixed" else 1 / (1 + math.exp(-0.01 * step))
                        tracking.log_metrics({"train/lambda": lam, "train/loss_jepa": 0.5, "train/loss_mlm": 9.0},
                                             step=step)
                run.set_outcome("finished", "")
    return parent.run_id


def test_claims_report_from_child_runs(tmp_path: Path) -> None:
    uri = tracking.default_uri(tmp_path)
    parent = _log_study(uri)
    study_dir = tmp_path / "study"
    result = StudyResult(study_dir, parent, uri, pd.DataFrame(), wall_s=1.0)
    budgets = pd.DataFrame({"arm": ["mlm", "hybrid", "hybrid_fixed"], "steps": [20] * 3, "warmup": [2] * 3,
                            "GFLOP/step": [1.0, 1.8, 1.8], "total PFLOP": [2e-5, 3.6e-5, 3.6e-5]})
    sections = claims_report(result, "claims-test", {"match": "steps"}, budgets)
    assert sections and "| claim |" in sections[0][1]
    out = study_dir / "report"
    table = pd.read_csv(out / "paper_claims.csv").set_index("claim")
    assert set(table.index) == {c["id"] for c in load_claims()["claims"]}  # one row per claim
    for protocol in ("reference", "harness"):
        assert table.loc["uniformity_headline", f"{protocol}_verdict"] == "reproduced"
        assert table.loc["uniformity_headline", f"{protocol}_verdict_uniformity_centered"] == "reproduced"
        assert table.loc["uniformity_headline", f"{protocol}_cells"] == len(TASKS) * len(POOLINGS)
        assert table.loc["uniformity_ratio", f"{protocol}_verdict"] == "reproduced"  # 6x in every cell
        assert table.loc["less_lexical", f"{protocol}_verdict"] == "reversed"
        assert table.loc["probe_parity", f"{protocol}_verdict"] == "reproduced"
        assert table.loc["probe_parity", f"{protocol}_cells"] == 3  # mnli is not measured here
        assert table.loc["richer_spectra", f"{protocol}_verdict"] == "not reproduced"
        assert table.loc["uniformity_headline", f"{protocol}_hybrid_mean"] == pytest.approx(-3.0, abs=0.01)
    assert table.loc["learned_lambda", "verdict"] == "not reproduced"  # L_JEPA < L_MLM at every log step
    assert table.loc["training_setup", "verdict"] == "not reproduced"  # step-matched: 1.8x the FLOPs
    cells = pd.read_csv(out / "paper_claims_cells.csv")
    assert {"p_welch", "p_permutation", "p_holm", "paper_hybrid", "paper_mlm"} <= set(cells.columns)
    lam = pd.read_csv(out / "lambda_trajectories.csv")
    assert set(lam["label"]) == {"hybrid-s0", "hybrid-s1", "hybrid-s2"} and len(lam) == 12  # learned λ only
    md = (out / "paper_claims.md").read_text()
    assert "Welch" in md.split("## Claims")[0] and "Verdict rule" in md.split("## Claims")[0]  # stated at the top
    assert "uniformity_centered" in md and "![learned lambda](plots/claims_lambda.png)" in md
    page = (out / "paper_claims.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 3 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "plots/" not in page  # self-contained: no link to a file beside it

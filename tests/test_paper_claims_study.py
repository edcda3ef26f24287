"""studies/paper_claims.py --smoke end to end (slow): real Ray, data and an MLflow sqlite store; two arms x two
seeds of the tiny model, every encoder evaluated under both protocols, then the claims report on the parent run."""

from __future__ import annotations

import base64
import json
import re

import pandas as pd
import pytest

from harness import tracking
from studies import paper_claims

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("claims")
    assert paper_claims.main(["--config", "studies/configs/tiny.yaml", "--smoke", f"output_dir={out}"]) == 0
    study = out / "studies" / "paper_claims_smoke"
    uri = tracking.default_uri(out)
    parent = json.loads((study / "study.json").read_text())["parent_run_id"]
    return {"study": study, "uri": uri, "parent": parent, "children": tracking.child_runs(uri, parent)}


def test_one_parent_with_a_finished_child_per_arm_and_seed_under_both_protocols(smoke: dict) -> None:
    children = smoke["children"]
    assert sorted(c["tags"]["label"] for c in children) == ["hybrid-s0", "hybrid-s1", "mlm-s0", "mlm-s1"]
    for child in children:
        assert child["status"] == "FINISHED" and child["tags"]["outcome"] == "finished"
        metrics = child["metrics"]
        for key in ("select/mean_score", "probe/sst2/mean/acc", "geom/stsb/max/uniformity",
                    "geom/sst2/mean/uniformity_centered", "perf/eval_harness_wall_s", "perf/eval_reference_wall_s"):
            assert key in metrics, key
        assert any(k.startswith("ref/geom/") and k.endswith("/uniformity") for k in metrics)
        assert any(k.startswith("ref/probe/") for k in metrics)
    trials = smoke["study"] / "trials"
    assert (trials / "hybrid-s0" / "eval" / "results.csv").is_file()
    reference = pd.read_csv(trials / "hybrid-s0" / "eval_reference" / "results.csv")
    assert set(reference["protocol"]) == {"reference"}


def test_claims_report_files_and_a_seed_level_test(smoke: dict) -> None:
    report = smoke["study"] / "report"
    table = pd.read_csv(report / "paper_claims.csv").set_index("claim")
    assert "uniformity_headline" in table.index and "learned_lambda" in table.index
    for protocol in ("reference", "harness"):
        assert table.loc["uniformity_headline", f"{protocol}_verdict"] in ("reproduced", "not reproduced", "reversed")
    cells = pd.read_csv(report / "paper_claims_cells.csv")
    row = cells[(cells["task"] == "sst2") & (cells["pooling"] == "mean") & (cells["metric"] == "uniformity")
                & (cells["protocol"] == "harness")].iloc[0]
    assert row["n_a"] == 2 and row["n_b"] == 2 and 0 <= row["p_holm"] <= 1 and 0 < row["p_permutation"] <= 1
    lam = pd.read_csv(report / "lambda_trajectories.csv")
    assert set(lam["label"]) == {"hybrid-s0", "hybrid-s1"} and sorted(set(lam["step"])) == [5, 10, 15, 20]
    md = (report / "paper_claims.md").read_text()
    assert "uniformity_centered" in md and "Welch" in md.split("## Claims")[0]
    page = (report / "paper_claims.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "## The paper's claims" in (report / "report.md").read_text()


def test_the_report_is_on_the_parent_run(smoke: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(smoke["uri"])
    files = {f.path for f in client.list_artifacts(smoke["parent"], "report")}
    assert {"report/paper_claims.html", "report/paper_claims.md", "report/paper_claims.csv"} <= files
    child = next(c for c in smoke["children"] if c["tags"]["label"] == "mlm-s0")
    assert {"eval", "eval_reference"} <= {f.path for f in client.list_artifacts(child["run_id"])}

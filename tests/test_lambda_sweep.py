"""studies/lambda_sweep.py end to end on real Ray, Optuna, data and an MLflow server on 127.0.0.1.

Two trials of the tiny model, drawn by the seeded TPE sampler from a space whose learning rate is
either sane or absurd: the seed-0 draws give one trial of each, so one trial finishes (quick probe,
full evaluation, final metrics) and one diverges (marked, while the study goes on). The study is
multi-objective (held-out-train probe score up, validation MLM loss down), so its report holds a Pareto front.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from studies import lambda_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP_OVERRIDES = ["study.name=sweep", "study.num_samples=2", "study.max_concurrent=2", "study.scheduler=none",
                   "optim.warmup_steps=0", "optim.grad_clip=0",
                   "study.metric=[select/mean_score, val/loss_mlm]", "study.mode=[max, min]"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rest(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite store, started for these tests."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not answer /health within 60 s")
    yield base
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def sweep(ray_session, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sweep")
    space = out / "space.yaml"
    space.write_text("objective:\n  lambda_init: {float: [0.1, 0.9]}\noptim:\n  lr: {choice: [1.0e-3, 1.0e+30]}\n")
    args = ["--config", "studies/configs/tiny.yaml", "--space", str(space), "--smoke", *SWEEP_OVERRIDES,
            f"tracking.uri={mlflow_server}", f"output_dir={out}"]
    assert lambda_sweep.main(args) == 0
    return {"args": args, "out": out, "study_dir": out / "studies" / "sweep", "base": mlflow_server}


def _runs(base: str) -> list[dict]:
    experiment = _rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=predict-and-reconstruct")
    found = _rest(base, "/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100})
    runs = []
    for run in found.get("runs", []):
        data = run["data"]
        runs.append({"id": run["info"]["run_id"], "status": run["info"]["status"],
                     "tags": {t["key"]: t["value"] for t in data.get("tags", [])},
                     "params": {p["key"]: p["value"] for p in data.get("params", [])},
                     "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])}})
    return runs


def test_parent_and_children_with_params_metrics_and_outcomes_through_the_rest_api(sweep: dict) -> None:
    runs = _runs(sweep["base"])
    parents = [r for r in runs if r["tags"].get("kind") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["id"]]
    assert len(children) == 2
    by_lr = {float(c["params"]["trial.optim.lr"]): c for c in children}
    done, diverged = by_lr[1e-3], by_lr[1e30]

    assert done["status"] == "FINISHED" and done["tags"]["outcome"] == "finished"
    assert 0.1 <= float(done["params"]["objective.lambda_init"]) <= 0.9
    assert done["params"]["objective.lambda_init"] == done["params"]["trial.objective.lambda_init"]
    for key in ("select/quick_score", "select/quick/sst2", "select/quick/stsb", "select/mean_score",
                "probe/mean_score", "geom/mean_uniformity", "probe/sst2/mean/acc", "geom/stsb/attention/uniformity",
                "val/loss_mlm"):
        assert key in done["metrics"], key
    assert 0 < done["metrics"]["select/mean_score"] < 1 and 0 < done["metrics"]["probe/mean_score"] < 1
    history = _rest(sweep["base"], f"/api/2.0/mlflow/metrics/get-history?run_id={done['id']}&metric_key=train/lambda")
    assert sorted(m["step"] for m in history["metrics"]) == [5, 10, 15, 20]  # λ at every log step
    quick = _rest(sweep["base"], f"/api/2.0/mlflow/metrics/get-history?run_id={done['id']}"
                                 "&metric_key=select/quick_score")
    assert sorted(m["step"] for m in quick["metrics"]) == [5, 10, 15, 20]  # the quick probe at every eval step
    artifacts = _rest(sweep["base"], f"/api/2.0/mlflow/artifacts/list?run_id={done['id']}&path=eval")
    assert {"eval/results.csv", "eval/plots"} <= {f["path"] for f in artifacts["files"]}

    assert diverged["status"] == "FAILED" and diverged["tags"]["outcome"] == "diverged"
    assert diverged["tags"]["outcome_note"].startswith("diverged at step")
    assert "select/mean_score" not in diverged["metrics"] and "probe/mean_score" not in diverged["metrics"]

    assert parent["status"] == "FINISHED"
    assert parent["params"]["best.objective.lambda_init"] == done["params"]["trial.objective.lambda_init"]
    assert parent["tags"]["best_trial"] == done["tags"]["label"]
    for metric in ("select/mean_score", "val/loss_mlm"):
        assert parent["metrics"][f"best/{metric}"] == pytest.approx(done["metrics"][metric])
    assert not [k for k in parent["metrics"] if k.startswith(("best/probe/", "best/geom/"))]
    assert parent["metrics"]["trials/finished"] == 1 and parent["metrics"]["trials/diverged"] == 1
    report = _rest(sweep["base"], f"/api/2.0/mlflow/artifacts/list?run_id={parent['id']}&path=report")
    assert {"report/report.md", "report/summary.csv", "report/best_config.yaml"} <= {f["path"] for f in report["files"]}


def test_report_files_on_disk(sweep: dict) -> None:
    report = sweep["study_dir"] / "report"
    text = (report / "report.md").read_text()
    assert "## Pareto front" in text and "## Trials" in text and "plots/quick_probe.png" in text
    for plot in ("quick_probe.png", "pareto.png", "metric_vs_params.png"):
        assert (report / "plots" / plot).stat().st_size > 0
    assert "lr: 0.001" in (report / "best_config.yaml").read_text()
    # Tune (Optuna, ASHA) never saw a dev score: every result Tune recorded holds selection metrics only.
    results = [json.loads(line) for f in (sweep["study_dir"] / "tune").rglob("result.json")
               for line in f.read_text().splitlines() if line.strip()]
    assert results and any("select/mean_score" in r for r in results)
    assert not [k for r in results for k in r if k.startswith(("probe/", "geom/", "ref/"))]


def test_rerun_resumes_without_new_runs_and_other_settings_are_refused(sweep: dict) -> None:
    before = _runs(sweep["base"])
    assert lambda_sweep.main(sweep["args"]) == 0  # the finished study: nothing re-runs, report rewritten
    after = _runs(sweep["base"])
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)
    with pytest.raises(SystemExit, match="optim.batch_size: was 8, now 4"):
        lambda_sweep.main([*sweep["args"], "optim.batch_size=4"])

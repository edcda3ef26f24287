"""Screenshots of the MLflow UI as a user opens it, taken with headless Chromium (Debian's `chromium` package).

    python scripts/mlflow_screenshots.py --store outputs/mlflow.db --out screenshots/

Starts `mlflow ui` on 127.0.0.1 for the sqlite store, finds its experiments and, in each, the runs and the first
run with a `report/report.html` (a study's parent run) or a `paper_claims.html`, and saves one PNG per page: the
experiment list, each experiment's runs page (where MLflow 3 should open a training experiment), a run's page and
the report artifact. Talks to the server over its REST API only. A tool for looking, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def artifact_paths(base: str, run_id: str, path: str = "") -> list[str]:
    query = f"artifacts/list?run_id={run_id}" + (f"&path={path}" if path else "")
    files = call(base, query).get("files", [])
    found = []
    for f in files:
        found += artifact_paths(base, run_id, f["path"]) if f.get("is_dir") else [f["path"]]
    return found


def shoot(chromium: str, url: str, png: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing remembered from an earlier look
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=15000",
                        f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    print(f"{png}  <- {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, type=Path, help="the sqlite file of a tracking store (mlflow.db)")
    parser.add_argument("--out", default=Path("screenshots"), type=Path, help="folder for the PNGs")
    parser.add_argument("--size", default="1600,1000", help="browser window, width,height")
    args = parser.parse_args()
    if not args.store.is_file():
        parser.error(f"--store {args.store}: no such file; pass the mlflow.db of a run's output_dir")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("no chromium on PATH: install Debian's package (apt-get install chromium)")
    # The query parameter that opens MLflow 3.17's model-training pages, as the harness's links carry it (imported
    # here: it loads mlflow, which --help and bad input need not wait for).
    from harness.tracking import TRAINING_VIEW

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    store = args.store.resolve()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
                               "--default-artifact-root", str(store.parent / "mlartifacts"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            raise SystemExit("mlflow ui did not answer /health within 2 minutes")
        shoot(chromium, f"{base}/#/experiments", args.out / "experiments.png", args.size)
        experiments = call(base, "experiments/search", {"max_results": 100}).get("experiments", [])
        for exp in experiments:
            query = {"experiment_ids": [exp["experiment_id"]], "max_results": 50}
            runs = call(base, "runs/search", query).get("runs", [])
            if not runs:
                continue
            name = exp["name"].replace("/", "_")
            experiment = f"{base}/#/experiments/{exp['experiment_id']}"
            shoot(chromium, experiment, args.out / f"{name}-default.png", args.size)  # what a bare link opens
            shoot(chromium, experiment + TRAINING_VIEW, args.out / f"{name}-runs.png", args.size)
            for run in runs:
                run_id = run["info"]["run_id"]
                reports = [p for p in artifact_paths(base, run_id) if p.endswith(("report/report.html",
                                                                                  "paper_claims.html"))]
                if reports:
                    page = f"{base}/#/experiments/{exp['experiment_id']}/runs/{run_id}"
                    shoot(chromium, page + TRAINING_VIEW, args.out / f"{name}-run.png", args.size)
                    shoot(chromium, f"{page}/artifacts/{reports[0]}{TRAINING_VIEW}", args.out / f"{name}-report.png",
                          args.size)
                    break
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Study operations on real Ray (slow): resume after the driver is killed, and `ray job submit` to a local head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import tracking

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.slow


def _children(uri: str, out: Path, name: str) -> list[dict]:
    state = out / "studies" / name / "study.json"
    if not state.is_file():
        return []
    return tracking.child_runs(uri, json.loads(state.read_text())["parent_run_id"])


def _steps(uri: str, run: dict) -> list[int]:
    return [int(value) for _, value in tracking.metric_history(uri, run["run_id"], "step")]


def test_killed_driver_resumes_without_rerunning_or_duplicating(ray_session, tmp_path: Path) -> None:
    """Trial 1 finishes, the driver is SIGKILLed while trial 2 is past its step-10 checkpoint; the same command
    again keeps trial 1 as it was and resumes trial 2 from its checkpoint under the same child run."""
    out = tmp_path / "out"
    uri = tracking.default_uri(out)
    command = [sys.executable, "studies/lambda_sweep.py", "--config", "studies/configs/tiny.yaml", "--smoke",
               "study.name=resume", "study.max_concurrent=1", "study.scheduler=none", "optim.max_steps=40",
               "train.checkpoint_every=10", "train.eval_every=10", f"output_dir={out}"]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 420
    while time.time() < deadline and driver.poll() is None:
        runs = _children(uri, out, "resume")
        running = [r for r in runs if r["status"] == "RUNNING" and r["metrics"].get("step", 0) >= 10]
        if any(r["status"] == "FINISHED" for r in runs) and running:
            break
        time.sleep(0.5)
    assert driver.poll() is None, f"the study ended before the kill:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {r["run_id"]: r for r in _children(uri, out, "resume")}
    first = next(r for r in before.values() if r["status"] == "FINISHED")
    killed = next(r for r in before.values() if r["status"] == "RUNNING")
    first_steps = _steps(uri, first)

    time.sleep(5)  # Ray reaps the dead driver's trial actors
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout
    after = {r["run_id"]: r for r in _children(uri, out, "resume")}
    assert set(after) == set(before)  # no duplicated child run
    assert _steps(uri, after[first["run_id"]]) == first_steps  # the finished trial did not run again
    resumed = after[killed["run_id"]]
    assert resumed["status"] == "FINISHED" and resumed["tags"]["outcome"] == "finished"
    steps = _steps(uri, resumed)
    assert steps[-1] == 40 and steps.count(5) == 1  # went on from the step-10 checkpoint, not from step 0


def _ray(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "ray"), *args], env=env, capture_output=True,
                          text=True, **kwargs)


def test_ray_job_submit_runs_a_smoke_sweep_on_a_local_head(tmp_path: Path) -> None:
    """`ray start --head` (token authentication on), then `ray job submit --working-dir .` of the smoke sweep."""
    import socket

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    temp = Path(f"/tmp/rayjob_{os.getpid()}")
    # As in an activated venv: the job's `python` is the one with this project's dependencies.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # Its own agent port: the session's Ray (an earlier test's) holds the default 52365, and a head whose
    # agent cannot bind it accepts no job ("No available agent").
    started = _ray(["start", "--head", f"--port={ports[0]}", f"--dashboard-port={ports[1]}",
                    f"--dashboard-agent-listen-port={ports[2]}", "--num-cpus=3",
                    "--include-dashboard=true", f"--temp-dir={temp}", "--object-store-memory=200000000"], env,
                   timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        out = tmp_path / "out"
        submit = ["job", "submit", f"--address=http://127.0.0.1:{ports[1]}", "--working-dir", ".",
                  "--runtime-env", "studies/runtime_env.yaml", "--",
                  "python", "studies/lambda_sweep.py", "--config", "studies/configs/tiny.yaml", "--smoke",
                  "study.num_samples=1", f"output_dir={out}",
                  f"data.source={SHARED / 'wikipedia' / 'enwiki-2015-excerpt'}",
                  f"data.tokenizer={SHARED / 'tokenizers' / 'bert-base-uncased'}", f"eval.glue_dir={SHARED / 'glue'}"]
        deadline = time.time() + 60  # the head's job agent comes up some seconds after `ray start` returns
        while True:
            submitted = _ray(submit, env, cwd=REPO, timeout=600)
            if "No available agent" not in submitted.stderr + submitted.stdout or time.time() > deadline:
                break
            time.sleep(2)
        assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout and "[lambda_sweep] report" in submitted.stdout
        summary = (out / "studies" / "lambda_sweep_smoke" / "report" / "summary.csv").read_text()
        assert summary.count("\n") == 2  # header + the one trial
    finally:
        # `ray stop` would also stop the test session's cluster: stop only this head's processes.
        subprocess.run(["pkill", "-f", str(temp)], check=False)
        time.sleep(2)
        subprocess.run(["pkill", "-9", "-f", str(temp)], check=False)

"""Resume the way users expect: Ctrl-C, then the same command continues the run from its last checkpoint under the
same MLflow run; --fresh starts over. On Ray Train's workers and in process (train.in_process)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import tracking
from harness.checkpoint import checkpoint_step

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "studies" / "configs" / "tiny.yaml"


def checkpoints(out: Path) -> list[Path]:
    return [p for p in (out / "ray_results").glob("*/checkpoint_*")
            if (p / "state.pt").is_file() and p.suffix != ".partial"]  # an in-process one being written


@pytest.mark.slow
@pytest.mark.parametrize("in_process", ["false", "true"])
def test_ctrl_c_then_the_same_command_continues_the_same_run(tmp_path: Path, ray_session, in_process: str) -> None:
    out = tmp_path / "outputs"
    command = [sys.executable, "-m", "harness.pretrain", "--config", str(TINY), f"output_dir={out}",
               "train.cpus_per_worker=0.5", "optim.max_steps=300", "train.log_every=10",
               "train.checkpoint_every=20", "train.eval_every=0", f"train.in_process={in_process}"]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not checkpoints(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, "the run ended before it could be interrupted"
    client = MlflowClient(tracking.default_uri(out))
    if in_process == "true":  # its step reached MLflow before the checkpoint was written: a rerun leaves no gap
        written = {checkpoint_step(p) for p in checkpoints(out)}
        (run,) = client.search_runs([client.get_experiment_by_name("predict-and-reconstruct").experiment_id])
        assert written <= {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 130, output[-3000:]
    assert "run the same command again" in output and "harness.pretrain --config" in output

    (interrupted,) = client.search_runs([client.get_experiment_by_name("predict-and-reconstruct").experiment_id])
    assert interrupted.info.status == "KILLED"
    before = [m.step for m in client.get_metric_history(interrupted.info.run_id, "train/loss")]
    assert before and before[-1] < 300

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing run" in second.stdout + second.stderr
    runs = client.search_runs([interrupted.info.experiment_id])
    assert [r.info.run_id for r in runs] == [interrupted.info.run_id]  # the same MLflow run, no orphan
    assert runs[0].info.status == "FINISHED" and runs[0].data.metrics["step"] == 300
    steps = [m.step for m in client.get_metric_history(interrupted.info.run_id, "train/loss")]
    resumed = steps[len(before):]
    resumed_at = resumed[0] - 10
    assert resumed_at % 20 == 0 and resumed_at <= before[-1]  # continued at a checkpoint, not at 0
    assert resumed == list(range(resumed_at + 10, 301, 10))

    fresh = subprocess.run([*command, "--fresh", "optim.max_steps=20"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=900)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert len(client.search_runs([interrupted.info.experiment_id])) == 2

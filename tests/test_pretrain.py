"""The Ray harness end to end: real Ray Train workers on prepared real Wikipedia, MLflow in sqlite."""

import tempfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from harness import tracking
from harness.checkpoint import STATE_FILE
from harness.config import ConfigError, load_config
from harness.pretrain import run_pretraining, train_here
from harness.step import lr_multiplier
from harness.tracking import TrackingError
from harness.train_callbacks import InProcessRun
from harness.worker import FailOnceAt

TINY = Path(__file__).resolve().parents[1] / "studies" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory, ray_session) -> Path:
    return tmp_path_factory.mktemp("pretrain")  # one data cache and one mlflow.db for the module


def run(out: Path, name: str, *overrides: str, step_hook=None) -> dict:
    cfg = load_config(TINY, [f"output_dir={out}", "train.cpus_per_worker=0.5", *overrides])
    return run_pretraining(cfg, run_name=name, step_hook=step_hook)


def history(summary: dict, key: str) -> list[tuple[int, float]]:
    return tracking.metric_history(summary["tracking_uri"], summary["mlflow_run_id"], key)


def test_lr_schedule_first_step_at_warmup_lr_then_cosine() -> None:
    assert lr_multiplier(0, 10, 100, 0.0) == pytest.approx(0.1)  # the first optimiser step is not at lr=0 nor full lr
    assert lr_multiplier(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert lr_multiplier(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(100, 10, 100, 0.1) == pytest.approx(0.1)


def assert_trained(summary: dict, objective: str, reports: int) -> None:
    """The run finished, every loss term fell, and the run's record in MLflow is complete."""
    assert summary["outcome"] == "finished"
    terms = [k for k in ("train/loss_mlm", "train/loss_jepa") if objective in ("hybrid", k.rsplit("_", 1)[1])]
    for term in ["train/loss", *terms]:
        values = [v for _, v in history(summary, term)]
        assert len(values) == reports and values[-1] < values[0], f"{term} did not fall: {values}"
    assert len(history(summary, "train/lambda")) == reports  # λ reported at every log step
    recorded = tracking.read_run(summary["tracking_uri"], summary["mlflow_run_id"])
    assert recorded["status"] == "FINISHED" and recorded["params"]["objective.name"] == objective
    val_key = "val/loss_jepa" if objective == "jepa" else "val/loss_mlm"
    for key in ("perf/tokens_per_s", "perf/mfu", "perf/data_wait", "train/grad_norm", "train/lr", val_key):
        assert key in recorded["metrics"], key
    # Where the run's time went besides its steps (benchmarks/tune_overhead.py adds them up).
    phases = ("perf/worker_start_s", "perf/worker_setup_s", "perf/peak_s", "perf/validate_s", "perf/report_s",
              "perf/train_time_s", "perf/fit_wall_s", "perf/export_s")
    assert all(recorded["metrics"][key] >= 0 for key in phases), {k: recorded["metrics"].get(k) for k in phases}
    in_fit = sum(recorded["metrics"][key] for key in phases[:6])
    assert in_fit <= recorded["metrics"]["perf/fit_wall_s"], "the phases inside fit() overlap"
    encoder = AutoModel.from_pretrained(summary["encoder"])  # the final encoder, in HF format
    assert encoder.config.hidden_size == 64


@pytest.mark.parametrize(("objective", "passes"), [("mlm", 2), ("jepa", 2), ("hybrid", 1)])
def test_two_workers_train_and_losses_fall(out: Path, objective: str, passes: int) -> None:
    summary = run(out, f"{objective}-p{passes}", f"objective.name={objective}", f"objective.passes={passes}",
                  "train.num_workers=2", "optim.max_steps=30", "train.log_every=5", "train.eval_every=15")
    assert summary["steps"] == 30
    assert_trained(summary, objective, reports=6)


def test_worker_failure_resumes_from_the_last_checkpoint(out: Path) -> None:
    """Hybrid with two passes on 2 workers and the default config's recovery; the last worker raises once at
    step 16."""
    summary = run(out, "fault", "objective.name=hybrid", "objective.passes=2", "train.num_workers=2",
                  "optim.max_steps=30", "train.log_every=5", "train.checkpoint_every=10", "train.eval_every=15",
                  step_hook=FailOnceAt(16, out / "fault_injected"))  # the default train.max_failures
    assert summary["steps"] == 30
    assert (out / "fault_injected").exists()
    steps = [s for s, _ in history(summary, "train/loss")]
    # Steps 11-16 ran twice: the restarted workers resumed from the step-10 checkpoint, not from scratch.
    assert steps == [5, 10, 15, 15, 20, 25, 30], steps
    assert_trained(summary, "hybrid", reports=7)  # step 15 reported twice


def checkpoint_at(out: Path, run_name: str, step: int) -> Path:
    for directory in sorted((out / "ray_results" / run_name).glob("checkpoint_*")):
        if torch.load(directory / STATE_FILE, weights_only=False)["progress"]["step"] == step:
            return directory
    raise AssertionError(f"no checkpoint at step {step} in {run_name}")


def test_resume_reproduces_the_uninterrupted_run(out: Path) -> None:
    common = ["optim.max_steps=8", "train.log_every=1", "train.checkpoint_every=4", "train.keep_checkpoints=4",
              "train.eval_every=0"]
    straight = run(out, "straight", *common)
    resumed = run(out, "resumed", *common, f"train.resume_from={checkpoint_at(out, 'straight', 4)}")
    expected = dict(history(straight, "train/loss"))
    got = dict(history(resumed, "train/loss"))
    assert sorted(got) == [5, 6, 7, 8]
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"


def test_background_upload_stores_the_same_checkpoints_and_cleans_its_staging(out: Path) -> None:
    common = ["optim.max_steps=8", "train.log_every=1", "train.checkpoint_every=4", "train.keep_checkpoints=4",
              "train.eval_every=0"]
    if not (out / "ray_results" / "straight").is_dir():
        run(out, "straight", *common)
    staged_before = set(Path(tempfile.gettempdir()).glob("pnr-checkpoint-*"))
    background = run(out, "background", *common, "train.async_checkpoint=true")
    assert set(Path(tempfile.gettempdir()).glob("pnr-checkpoint-*")) <= staged_before  # Ray deleted each staging dir
    for step in (4, 8):  # the step-4 one was uploaded while training went on; the last one before the run returned
        ours = torch.load(checkpoint_at(out, "background", step) / STATE_FILE, weights_only=True)
        reference = torch.load(checkpoint_at(out, "straight", step) / STATE_FILE, weights_only=True)
        assert ours["model"].keys() == reference["model"].keys()
        for name, tensor in reference["model"].items():
            assert torch.equal(ours["model"][name], tensor), f"step {step}: {name}"
    assert torch.load(Path(background["checkpoint"]) / STATE_FILE, weights_only=True)["progress"]["step"] == 8


def test_checkpoint_from_another_config_is_refused_before_training(out: Path) -> None:
    if not (out / "ray_results" / "straight").is_dir():
        run(out, "straight", "optim.max_steps=8", "train.checkpoint_every=4", "train.eval_every=0")
    checkpoint = checkpoint_at(out, "straight", 4)
    with pytest.raises(ValueError, match=r"checkpoint comes from another config: model\.hidden_size: checkpoint 64"):
        run(out, "wrong", "model.hidden_size=128", f"train.resume_from={checkpoint}")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        run(out, "wrong", f"train.resume_from={out}")
    assert not (out / "runs" / "wrong").exists()


@pytest.mark.parametrize(
    ("override", "error", "fragment"),
    [
        ("data.source=/nonexistent/wiki", FileNotFoundError, "/nonexistent/wiki"),
        ("data.tokenizer=/nonexistent/tokenizer", FileNotFoundError, "/nonexistent/tokenizer"),
        ("tracking.uri=http://127.0.0.1:9", TrackingError, "unreachable"),
        ("tracking.uri=./mlruns", TrackingError, "plain-directory store is deprecated"),
        ("model.vocab_size=1000", ValueError, "model.vocab_size=1000 is smaller than the tokenizer"),
    ],
)
def test_bad_inputs_fail_early_and_clearly(out: Path, override: str, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        run(out, "bad", override)
    assert not (out / "runs" / "bad").exists()


@pytest.mark.parametrize("in_process", ["false", "true"])
def test_divergence_ends_the_run_with_its_step(out: Path, in_process: str) -> None:
    summary = run(out, f"diverge-{in_process}", "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0",
                  "train.log_every=5", "train.eval_every=0", f"train.in_process={in_process}")
    assert summary["outcome"] == "diverged"
    assert summary["note"].startswith("diverged at step ")
    recorded = tracking.read_run(summary["tracking_uri"], summary["mlflow_run_id"])
    assert recorded["status"] == "FAILED" and recorded["tags"]["outcome"] == "diverged"
    assert recorded["metrics"]["diverged_at_step"] < 5


def test_meter_means_host_and_device_metrics_and_finds_the_first_bad_step() -> None:
    from harness.worker import Meter

    meter = Meter(torch.device("cpu"))
    meter.add({"loss": torch.tensor(2.0), "ctx_len": 10.0}, step=0, loss=torch.tensor(2.0))
    meter.add({"loss": torch.tensor(4.0), "ctx_len": 20.0}, step=1, loss=torch.tensor(float("nan")))
    meter.add({"loss": torch.tensor(6.0), "ctx_len": 30.0}, step=2, loss=torch.tensor(float("inf")))
    assert meter.read("train/") == {"train/ctx_len": 20.0, "train/loss": 4.0}
    assert meter.read("train/") == {}  # reading resets the sums
    assert meter.diverged_at() == 1


def test_in_process_run_trains_as_a_ray_train_worker_does(out: Path) -> None:
    """train.in_process: the same loop in the driver, without Ray Train's controller and worker processes; with one
    worker's data order and seeds it reproduces a Ray Train run, and keeps its checkpoints in the run's storage."""
    common = ["optim.max_steps=8", "train.log_every=1", "train.checkpoint_every=4", "train.keep_checkpoints=1",
              "train.eval_every=4"]
    on_ray = run(out, "on-ray", *common)
    here = run(out, "in-process", *common, "train.in_process=true")
    for key in ("train/loss", "val/loss"):
        expected, got = dict(history(on_ray, key)), dict(history(here, key))
        assert sorted(got) == sorted(expected) and got, key
        for step, value in got.items():
            assert value == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (key, step)
    storage = out / "ray_results" / "in-process"
    assert [p.name for p in storage.iterdir()] == ["checkpoint_00000008"]  # train.keep_checkpoints=1
    assert here["checkpoint"] == str(storage / "checkpoint_00000008")
    assert AutoModel.from_pretrained(here["encoder"]).config.hidden_size == 64


def test_in_process_loop_restarts_after_a_failure_and_a_rerun_continues_it(out: Path) -> None:
    args = ["train.in_process=true", "optim.max_steps=30", "train.log_every=5", "train.checkpoint_every=10",
            "train.eval_every=15"]
    restarted = run(out, "in-process-fault", *args, step_hook=FailOnceAt(16, out / "in_process_fault"))
    # The default train.max_failures: the loop restarted from the step-10 checkpoint; steps 11-16 ran twice.
    assert [s for s, _ in history(restarted, "train/loss")] == [5, 10, 15, 15, 20, 25, 30]
    assert restarted["outcome"] == "finished"

    # No restart left: the run stops with the error, and the same call again continues it under its MLflow run.
    with pytest.raises(RuntimeError, match="injected fault at step 16"):
        run(out, "in-process-rerun", *args, "train.max_failures=0", step_hook=FailOnceAt(16, out / "rerun_fault"))
    continued = run(out, "in-process-rerun", *args, "train.max_failures=0")
    assert continued["outcome"] == "finished" and continued["steps"] == 30
    assert [s for s, _ in history(continued, "train/loss")] == [5, 10, 15, 15, 20, 25, 30]
    assert tracking.read_run(continued["tracking_uri"], continued["mlflow_run_id"])["status"] == "FINISHED"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_in_process_gpu_run_without_a_gpu_is_refused_before_any_work(out: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.in_process=True with train\.use_gpu=True: this process sees no "
                                          r"CUDA GPU"):
        run(out, "no-gpu", "train.in_process=true", "train.use_gpu=true")
    assert not (out / "runs" / "no-gpu").exists()


def test_in_process_run_that_trained_to_its_end_is_not_trained_again(out: Path) -> None:
    """A run stopped after its last checkpoint (e.g. in the export) is exported from it on rerun: the stream holds no
    batch past the last step, so the loop must not start again."""
    storage = out / "ray_results" / "in-process"
    if not storage.is_dir():
        run(out, "in-process", "optim.max_steps=8", "train.checkpoint_every=4", "train.eval_every=0",
            "train.in_process=true")
    cfg = load_config(TINY, [f"output_dir={out}", "optim.max_steps=8", "train.in_process=true"])
    checkpoint = train_here(cfg, {"name": "in-process"}, {}, InProcessRun(str(storage), "", "", None))
    assert checkpoint.path == str(storage / "checkpoint_00000008")

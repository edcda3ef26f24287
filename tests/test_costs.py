"""harness.costs: checkpoint and validation shares of a run's wall time, from the real configs."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from harness.config import load_config
from harness.costs import (
    ASSUMED_WRITE_BYTES_PER_S,
    WARN_ABOVE,
    checkpoint_bytes,
    estimate_costs,
    expected_step_s,
    gradient_bytes,
    occurrences,
    ring_allreduce_bytes,
    warn_if_costly,
)
from objectives import PretrainModule, train_flops_per_step

CONFIGS = "studies/configs"


DEFAULT_INTERVALS = ["train.use_gpu=true", "train.checkpoint_every=100", "train.eval_every=100"]  # TrainConfig's


@pytest.fixture(scope="module")
def base():
    """base.yaml's model at TrainConfig's default intervals (checkpoint and validation every 100 steps)."""
    return load_config(f"{CONFIGS}/base.yaml", DEFAULT_INTERVALS)


@pytest.fixture(scope="module")
def tiny():
    return load_config(f"{CONFIGS}/tiny.yaml")


def test_no_ray_or_mlflow_behind_the_estimate() -> None:
    # a plain module for the run's start-up: it must not pull the cluster stack in (a fresh interpreter tells)
    import subprocess

    code = "import sys, harness.costs; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_checkpoint_bytes_count_what_a_checkpoint_holds(name: str, base, tiny) -> None:
    cfg = {"tiny": tiny, "base": base}[name]
    module = PretrainModule(cfg)  # real tensors: torch.save's view of the state
    unique = {p.data_ptr(): p for p in module.parameters()}.values()  # tied weights share storage: saved once
    trained = sum(p.numel() for p in unique if p.requires_grad)
    frozen = sum(p.numel() for p in unique if not p.requires_grad)  # the EMA target
    assert frozen == sum(p.numel() for p in module.nets.target.parameters()) > 0
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    assert all(p.dtype == torch.float32 for p in unique)
    assert checkpoint_bytes(cfg) == 4 * (trained + frozen + 2 * trained) + buffers
    assert gradient_bytes(cfg) == 4 * trained


def test_base_sizes(base) -> None:
    # BERT-base-sized hybrid: ~121M trained parameters (the MLM decoder tied to the embeddings), ~109M EMA target
    assert 120e6 < gradient_bytes(base) / 4 < 122e6
    assert 1.85e9 < checkpoint_bytes(base) < 1.92e9


def test_ring_allreduce_bytes() -> None:
    assert ring_allreduce_bytes(1000, 1) == 0
    assert ring_allreduce_bytes(1000, 2) == 1000
    assert ring_allreduce_bytes(1000, 16) == pytest.approx(1875)
    with pytest.raises(ValueError):
        ring_allreduce_bytes(1000, 0)


@pytest.mark.parametrize(("steps", "every", "last", "expected"),
                         [(100, 10, True, 10), (105, 10, True, 11), (20, 100, True, 1), (20, 0, True, 1),
                          (20, 0, False, 0), (100, 10, False, 10)])
def test_occurrences_follow_the_loop(steps: int, every: int, last: bool, expected: int) -> None:
    assert occurrences(steps, every, always_last=last) == expected


def test_expected_step_time_from_flops(base) -> None:
    # 0.27 MFU of an H100's 989 TFLOP/s: base.yaml's hybrid step measured 98 ms on an H200 (BENCHMARKS.md)
    assert expected_step_s(base) == pytest.approx(train_flops_per_step(base) / (989e12 * 0.27))
    assert 0.09 < expected_step_s(base) < 0.105
    assert expected_step_s(base, peak_flops=1e15, mfu=0.5) == pytest.approx(train_flops_per_step(base) / 5e14)


def test_default_intervals_are_too_short_for_a_gpu(base) -> None:
    """TrainConfig's defaults (checkpoint and validation every 100 steps) on base.yaml's model: on an H100 a 1.9 GB
    checkpoint every ~10 s of training is about half the wall time. base.yaml's own intervals stay under the limit."""
    assert estimate_costs(load_config(f"{CONFIGS}/base.yaml"), step_s=0.098).warning is None
    estimate = estimate_costs(base, step_s=0.098)
    assert estimate.checkpoint_s == pytest.approx(checkpoint_bytes(base) / ASSUMED_WRITE_BYTES_PER_S)
    assert estimate.checkpoint_fraction > 0.4
    assert estimate.overhead_fraction > WARN_ABOVE
    assert estimate.warning is not None
    assert "train.checkpoint_every=" in estimate.warning and "50%" in estimate.warning


def test_the_cluster_config_stays_under_the_limit() -> None:
    cluster = load_config(f"{CONFIGS}/cluster.yaml")
    estimate = estimate_costs(cluster, step_s=0.098)
    assert estimate.overhead_fraction < WARN_ABOVE / 2 and estimate.warning is None
    # with a study's quick probe at every validation (a few seconds assumed) it still does
    assert estimate_costs(cluster, step_s=0.098, probe_s=5.0).warning is None
    # a slower store halves the margin, not more
    assert estimate_costs(cluster, step_s=0.098, write_bytes_per_s=100e6).overhead_fraction < WARN_ABOVE


def test_fractions_add_up(tiny) -> None:
    e = estimate_costs(tiny, step_s=0.02, write_bytes_per_s=1e9, eval_batch_cost=0.5)
    steps, t = tiny.optim.max_steps, tiny.train
    wall = steps * 0.02 + e.checkpoint_s + e.eval_s  # 20 steps: only the final checkpoint and validation
    assert e.checkpoint_fraction == pytest.approx(e.checkpoint_s / wall)
    assert e.eval_fraction == pytest.approx(e.eval_s / wall)
    assert e.eval_s == pytest.approx(t.eval_batches * 0.5 * 0.02)


def test_a_smoke_run_is_dominated_by_its_final_checkpoint(tiny) -> None:
    e = estimate_costs(tiny, step_s=0.01, write_bytes_per_s=50e6)
    assert e.warning is not None and "a longer run" in e.warning


def test_warning_names_intervals_that_fix_it(base) -> None:
    costly = estimate_costs(base, step_s=0.098)
    # validation every 100 steps is 4% of the steps' time: above half the limit, so it is named too
    assert "train.checkpoint_every=4000 and train.eval_every=200" in costly.warning
    half_fixed = load_config(f"{CONFIGS}/base.yaml", [*DEFAULT_INTERVALS, "train.checkpoint_every=4000"])
    assert estimate_costs(half_fixed, step_s=0.098).warning is not None
    fixed = load_config(f"{CONFIGS}/base.yaml",
                        [*DEFAULT_INTERVALS, "train.checkpoint_every=4000", "train.eval_every=200"])
    assert estimate_costs(fixed, step_s=0.098).warning is None


def test_arguments_checked(base) -> None:
    for kwargs in ({"step_s": 0.0}, {"write_bytes_per_s": 0.0}, {"probe_s": -1.0}, {"limit": 0.0}):
        with pytest.raises(ValueError):
            estimate_costs(base, **kwargs)


def test_warn_if_costly_logs_the_warning(base, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # caplog listens on the root logger; a CLI's harness.console.own_logging (run in this process by another
    # test) stops the harness's loggers propagating to it.
    monkeypatch.setattr(logging.getLogger("harness"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="harness.costs"):
        estimate = warn_if_costly(base, step_s=0.098)
    assert [r.getMessage() for r in caplog.records] == [estimate.warning]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.costs"):
        warn_if_costly(load_config(f"{CONFIGS}/cluster.yaml"), step_s=0.098)
    assert not caplog.records

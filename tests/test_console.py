"""The console's progress line: where the run is, elapsed time and ETA, the loss terms, λ."""

from __future__ import annotations

import re

from harness.console import KNOWN_NOISE, LOCAL_NOISE, clock, progress_line

PERF = {"perf/tokens_per_s": 3210.4, "perf/mfu": 0.4567, "perf/data_wait": 0.0123}


def test_clock_reads_hours_minutes_seconds() -> None:
    assert [clock(s) for s in (0, 59.6, 61, 3600 + 2 * 60 + 3, -5)] == ["0:00:00", "0:01:00", "0:01:01", "1:02:03",
                                                                     "0:00:00"]


def test_the_eta_extrapolates_this_process_s_own_rate() -> None:
    # A run resumed at step 100 of 400, now at step 200 after 50 s: 100 steps in 50 s, 200 to go -> 100 s.
    line = progress_line(200, 400, 50.0, 100, {"train/loss": 2.0, **PERF})
    assert line.startswith("step 200/400 (50%) | elapsed 0:00:50, ETA 0:01:40 | loss 2.0000 | ")
    assert line.endswith("3210 tok/s, MFU 0.46, data-wait 1.2%")


def test_a_hybrid_line_shows_both_loss_terms_and_lambda() -> None:
    metrics = {"train/loss": 1.5, "train/loss_jepa": 0.25, "train/loss_mlm": 2.75, "train/lambda": 0.51234, **PERF}
    line = progress_line(10, 20, 5.0, 10, metrics)
    assert "| loss 1.5000 (jepa 0.2500, mlm 2.7500) | λ 0.512 |" in line


def test_an_mlm_line_has_no_lambda() -> None:
    line = progress_line(10, 20, 5.0, 10, {"train/loss": 3.0, "train/loss_mlm": 3.0, "train/lambda": 0.0, **PERF})
    assert "(mlm 3.0000)" in line and "λ" not in line


def test_known_noise_skips_ray_s_own_lines_only() -> None:
    """The lines that Ray prints about its internals on every run (as the driver receives them) are skipped; the
    raylet's count of the processes it started is skipped on a local Ray only (LOCAL_NOISE); a warning about the
    user's work is not skipped."""
    noise = [
        "[2026-12-01 14:01:55,091 E 20043 20043] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches("
        "_TokenizeAndPack))' and ID: 'c82a' has constructor arguments in the object store and max_restarts > 0.",
        "WARNING __init__.py:28 -- Progress bars disabled. To enable, set `ray.data.DataContext.get_current()."
        "enable_progress_bars = True`.",
    ]
    raylet = ("WARNING: 8 PYTHON worker processes have been started on node: b1f9 with address: 127.0.0.1, which is 4x "
              "the maximum expected startup concurrency (2).")
    kept = ["WARNING: the loss became NaN at step 12", "Task failed: ValueError: train.batch_size must be > 0"]
    assert all(re.search(KNOWN_NOISE, line) for line in noise)
    assert re.search(LOCAL_NOISE, raylet) and not re.search(KNOWN_NOISE, raylet)
    assert not any(re.search(f"{KNOWN_NOISE}|{LOCAL_NOISE}", line) for line in kept)

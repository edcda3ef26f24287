"""The console's progress line: where the run is, elapsed time and ETA, the loss terms, λ."""

from __future__ import annotations

from harness.console import clock, progress_line

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

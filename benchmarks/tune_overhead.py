"""Tune overhead per trial: (trial wall - sum of step time) / trial wall, for trials of about a minute.

    python -m benchmarks.tune_overhead [--config studies/configs/small.yaml] [--steps 40] [--trials 2]

Runs a grid study of `trials` identical-but-for-the-seed trials one at a time (no ASHA, the quick probe
at the last step only) through the real study engine, and reads from each trial's MLflow run:
  perf/trial_wall_s        the trial function from start to its final report (incl. the full evaluation)
  perf/trial_train_wall_s  the same up to the end of pre-training (TorchTrainer start-up, data, export)
  perf/train_time_s        the sum of the step times (forward, backward, optimiser, data waits)
  perf/worker_setup_s      the worker's start to its first step (build the model, read the held-out batches)
  and the other phases of a trial (breakdown below), whose medians it prints as a table
  perf/eval_<protocol>_wall_s  the full evaluation under each protocol (--protocols harness reference)
Overhead is reported against both walls, and as the engine's own share: the trial's wall less its steps and less
the measurements the study asks for (validation, the quick probe, the evaluation suite); medians over trials.
perf/train_time_s holds the wait for the stream's first batch, which is Ray Data's start, not a step: both shares are
also printed with that wait counted as overhead (the steps after the first batch only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from harness import tracking
from harness.config import load_config
from harness.study import open_study
from harness.trial import TrialSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/configs/small.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--protocols", nargs="+", default=["harness"], help="evaluation protocols of each trial")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    output = args.output_dir or tempfile.mkdtemp(prefix="bench_tune_")
    cfg = load_config(args.config, [
        f"output_dir={output}", "study.name=tune_overhead", "study.scheduler=none", "study.max_concurrent=1",
        f"optim.max_steps={args.steps}", "optim.warmup_steps=5", "train.log_every=5", f"train.eval_every={args.steps}",
        "train.checkpoint_every=0", "train.cpus_per_worker=0.99", "train.torch_threads=2", "eval.tasks=[sst2]",
        "eval.poolings=[mean]", "eval.max_train=500", "eval.max_dev=500", "eval.n_boot=20", "eval.geometry_n=200",
        *args.overrides])
    # cpus_per_worker 0.99 (2 threads): with the trial's 0.01 CPU a whole CPU stays free for Ray Data's file
    # listing on a 2-CPU machine; 1.0 would leave 0.99 and the read would wait forever.
    grid = [TrialSpec(f"seed{s}", {"seed": s}) for s in range(args.trials)]
    with open_study(cfg, grid=grid, protocols=args.protocols) as study:
        started = time.perf_counter()
        result = study.run()
        study_wall = time.perf_counter() - started
    rows, phases = [], []
    for run_id in result.table["run_id"]:
        m = tracking.read_run(result.tracking_uri, run_id)["metrics"]
        wall, train_wall, steps = m["perf/trial_wall_s"], m["perf/trial_train_wall_s"], m["perf/train_time_s"]
        measuring = m["perf/validate_s"] + suite_wall(m)
        stepping = steps - m["perf/first_batch_s"]  # the steps after the stream's first batch
        rows.append((wall, train_wall, steps, (wall - steps) / wall, (train_wall - steps) / train_wall,
                     (wall - steps - measuring) / wall, (wall - stepping) / wall, (wall - stepping - measuring) / wall))
        evals = ", ".join(f"{p} {m[f'perf/eval_{p}_wall_s']:.1f} s" for p in args.protocols)
        print(f"trial wall {wall:.1f} s, pre-training wall {train_wall:.1f} s, sum of steps {steps:.1f} s: "
              f"overhead {rows[-1][3]:.1%} of the trial, {rows[-1][4]:.1%} of pre-training; last log interval: "
              f"data-wait {m['perf/data_wait']:.2%}, MFU {m['perf/mfu']:.2f}, {m['perf/tokens_per_s']:.0f} tokens/s; "
              f"evaluation: {evals}", flush=True)
        phases.append(breakdown(m))
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"median over {len(rows)} trials: trial wall {med[0]:.1f} s, pre-training wall {med[1]:.1f} s, "
          f"steps {med[2]:.1f} s, overhead {med[3]:.1%} (whole trial), {med[4]:.1%} (pre-training only), "
          f"{med[5]:.1%} (the engine's own: less validation, quick probe and evaluation suite)")
    print(f"with the wait for the stream's first batch counted as overhead, not as a step: overhead {med[6]:.1%} "
          f"(whole trial), the engine's own {med[7]:.1%}")
    print("where a trial's time goes (median s):")
    for phase in phases[0]:
        print(f"  {phase:<66} {statistics.median(p[phase] for p in phases):7.1f}")
    # Tune's own cost per trial, outside the trial function: its actor's start (imports) and teardown.
    print(f"  {'outside the trial function (study wall / trials - trial wall)':<66} "
          f"{study_wall / len(rows) - med[0]:7.1f}")


def breakdown(m: dict[str, float]) -> dict[str, float]:
    """A trial's wall time in phases, from its perf/* metrics: all but the "of which" row add up to
    perf/trial_wall_s (up to the untimed moments between them)."""
    in_fit = ("perf/worker_start_s", "perf/worker_setup_s", "perf/train_time_s", "perf/peak_s", "perf/validate_s",
              "perf/report_s")
    return {
        "trial set-up (MLflow run, params)": m["perf/trial_setup_s"],
        "stream's plan, before fit()": m["perf/trial_train_wall_s"] - m["perf/trial_setup_s"] - m["perf/fit_wall_s"]
        - m["perf/export_s"],
        "fit() to the workers' loop (controller, workers, process group)": m["perf/worker_start_s"],
        "worker set-up (model, held-out batches)": m["perf/worker_setup_s"],
        "the stream's first batch (Ray Data's start)": m["perf/first_batch_s"],
        "steps (incl. later data waits)": m["perf/train_time_s"] - m["perf/first_batch_s"],
        "matmul peak measurement": m["perf/peak_s"],
        "validation and quick probe": m["perf/validate_s"],
        "reports and checkpoints before the last": m["perf/report_s"],
        "last checkpoint, fit() returns": m["perf/fit_wall_s"] - sum(m[k] for k in in_fit),
        "export (copy, tokenizer, MLflow artifact)": m["perf/export_s"],
        "evaluation task": m["perf/eval_task_s"],
        "  of which the suite": suite_wall(m),
        "logging the evaluation": m["perf/trial_log_s"],
    }


def suite_wall(m: dict[str, float]) -> float:
    """The evaluation suite's wall time, summed over the trial's protocols."""
    return sum(v for k, v in m.items() if k.startswith("perf/eval_") and k.endswith("_wall_s"))


if __name__ == "__main__":
    main()

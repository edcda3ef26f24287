"""Evaluation defaults are defined once (SuiteConfig): the CLIs and the study's eval section start from them."""

from __future__ import annotations

import argparse

import pytest

from common.config import ConfigError
from eval.config import EvalConfig, SuiteConfig
from eval.run import add_suite_args, config_from


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
    assert (suite.max_len, suite.n_boot_spectral, suite.seed) == (128, 50, 0)


@pytest.mark.parametrize(("key", "value"), [("n_boot", 4), ("max_train", 0), ("cpus", 0.0)])
def test_impossible_values_fail_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{key}="):
        EvalConfig(**{key: value})


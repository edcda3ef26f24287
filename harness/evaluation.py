"""A finished trial's evaluation: the full suite under each of the study's protocols, in a Ray task of its own.

The task's process imports this module only (the eval stack, not the trial's Ray Train, Tune and MLflow stack:
seconds less to start), writes each protocol's tables to the trial's folder and returns the metrics; the trial
logs them to its MLflow run. The trial's process imports this module too, to send `evaluate_suites` to the task:
the suite's own imports (scikit-learn, SciPy, transformers, matplotlib: seconds of every trial process's start)
wait until the suite runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eval.config import PROTOCOLS, SuiteConfig
from harness.config import ConfigError
from harness.console import own_logging, quiet_libraries

if TYPE_CHECKING:
    import pandas as pd


def protocol_suite(suite: SuiteConfig, protocol: str) -> SuiteConfig:
    """The suite under one evaluation protocol (eval.config.SuiteConfig.protocol). eval.max_dev caps the dev rows of
    both: the harness protocol takes a seeded sample of them, the reference's analysis the first ones in file order
    (its reference_n, the reference code's --max_samples)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"evaluation protocol {protocol!r}: must be one of {list(PROTOCOLS)}")
    if protocol == "reference" and suite.max_dev is not None:
        return dataclasses.replace(suite, protocol=protocol, reference_n=min(suite.reference_n, max(suite.max_dev, 10)))
    return dataclasses.replace(suite, protocol=protocol)


def eval_folder(protocol: str) -> str:
    """A trial's evaluation folder (and MLflow artifact) under one protocol: eval/, eval_reference/."""
    return "eval" if protocol == "harness" else f"eval_{protocol}"


def protocol_metrics(results: pd.DataFrame, protocol: str) -> dict[str, float]:
    """A protocol's results as metrics: every row (`eval.suite.result_metrics`) and the headline numbers, named
    with the protocol's prefix (`ref/geom/sst2/mean/uniformity`; none for the harness protocol)."""
    from eval.suite import PROTOCOL_PREFIX, headline_metrics, result_metrics

    metrics = {**result_metrics(results), **headline_metrics(results)}
    stray = [k for k in metrics if not k.startswith(PROTOCOL_PREFIX[protocol])]
    if stray:
        raise RuntimeError(f"the {protocol} protocol's metrics {stray[:3]} lack its prefix")
    return metrics


def evaluate_suites(encoder: Path, glue_dir: Path | None, suites: Sequence[SuiteConfig], trial_dir: Path, name: str,
                    group: str) -> tuple[dict[str, float], dict[str, float]]:
    """The suite under each protocol, its tables written to the protocol's folder; (metrics, wall seconds)."""
    import transformers

    from eval.report import write_run
    from eval.suite import run_suite

    own_logging()  # a Ray task's process: the suite's progress lines, once
    quiet_libraries()
    transformers.utils.logging.set_verbosity_error()  # our exports have no pooler: its "MISSING" load report is noise
    metrics, walls = {}, {}
    for suite in suites:
        start, protocol = time.time(), suite.protocol
        result = run_suite(encoder, glue_dir=glue_dir, cfg=suite, name=name, group=group)
        write_run(result.results, result.replicates, result.spectra, trial_dir / eval_folder(protocol))
        metrics.update(protocol_metrics(result.results, protocol))
        walls[f"perf/eval_{protocol}_wall_s"] = time.time() - start
    return metrics, walls

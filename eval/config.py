"""Evaluation settings; every default is defined here, once.

`SuiteConfig` is one run of the suite (`eval.suite.run_suite`); `python -m eval.run` and `eval.compare` take their
option defaults from it. `EvalConfig` is the `eval` section of a run's config: the quick probe reported during
pre-training and the suite a study runs after it. Its suite fields default to SuiteConfig's, and
`EvalConfig.suite_config()` turns it into the SuiteConfig a study runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import require
from eval.pooling import POOLINGS, check_poolings
from eval.tasks import TASKS, get_spec

GLUE_DIR = "../shared/data/glue"  # the offline GLUE copy, relative to the repository root


@dataclass(frozen=True)
class ProbeConfig:
    """The linear probe's training and its hyper-parameter search (eval.probes.fit_probe)."""

    weight_decays: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01, 0.001)  # strongest first: ties keep it
    max_epochs: int = 40
    patience: int = 5  # stop a candidate after this many epochs without a better held-out score
    batch_size: int = 128
    lr: float = 1e-3
    pooler_lr: float = 3e-2  # the attention query must grow to O(sqrt(d)) to focus: a larger step
    val_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class SuiteConfig:
    """One run of the suite: tasks x poolings, subsamples, geometry sample, resamples, seed."""

    tasks: tuple[str, ...] = tuple(TASKS)
    poolings: tuple[str, ...] = POOLINGS
    max_len: int = 128
    batch_size: int = 64
    max_train: int | None = None  # seeded subsample of train; None = all
    max_dev: int | None = None  # seeded subsample of dev (quick checks only); None = all
    geometry_n: int = 1000  # dev sentences per task for geometry: min(n_dev, geometry_n)
    n_boot: int = 200
    n_boot_spectral: int = 50  # spectrum metrics need an eigendecomposition per resample
    seed: int = 0  # seeds everything: subsamples, probe splits and shuffling, resamples
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # its own seed is replaced by `seed`

    def validate(self) -> None:
        for t in self.tasks:
            get_spec(t)
        check_poolings(list(self.poolings))


SUITE_DEFAULTS = SuiteConfig()


@dataclass(frozen=True)
class EvalConfig:
    """The quick probe reported during pre-training (what ASHA stops on) and the suite run after it.
    Task and pooling names are checked against eval's registries by the study before any trial starts."""

    glue_dir: str | None = GLUE_DIR  # GLUE layout; null reads nyu-mll/glue from the Hub
    quick_tasks: tuple[str, ...] = ("sst2", "stsb")  # probed with mean pooling at every train.eval_every
    quick_train: int = 1000  # seeded subsample of each quick task's train split
    quick_dev: int = 500  # seeded subsample of each quick task's dev split
    quick_max_len: int = 64
    tasks: tuple[str, ...] = SUITE_DEFAULTS.tasks  # the full suite for trials that finish
    poolings: tuple[str, ...] = SUITE_DEFAULTS.poolings
    max_train: int | None = SUITE_DEFAULTS.max_train  # seeded train subsample per task (None: all)
    max_dev: int | None = SUITE_DEFAULTS.max_dev
    n_boot: int = SUITE_DEFAULTS.n_boot
    geometry_n: int = SUITE_DEFAULTS.geometry_n
    cpus: float = 1.0  # CPUs of the Ray task that runs the suite (plus a GPU when train.use_gpu)

    def __post_init__(self) -> None:
        for name in ("quick_train", "quick_dev", "quick_max_len", "n_boot", "geometry_n"):
            require(getattr(self, name) >= 8, name, getattr(self, name), "must be >= 8")
        for name in ("max_train", "max_dev"):
            require(getattr(self, name) is None or getattr(self, name) >= 8, name, getattr(self, name),
                    "must be >= 8 or null")
        require(self.cpus > 0, "cpus", self.cpus, "must be > 0")

    def suite_config(self) -> SuiteConfig:
        """The suite a study runs on each finished trial; what this section leaves out keeps SuiteConfig's
        defaults (max_len, batch_size, n_boot_spectral, seed, probe)."""
        return SuiteConfig(tasks=self.tasks, poolings=self.poolings, max_train=self.max_train, max_dev=self.max_dev,
                           n_boot=self.n_boot, geometry_n=self.geometry_n)

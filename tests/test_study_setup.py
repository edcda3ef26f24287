"""What a study checks before any work (harness.study, harness.trial): metric names, eval names and paths,
grids, and the fingerprint that lets a study resume. No cluster, no store."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import ConfigError, load_config
from harness.evaluation import protocol_suite
from harness.launch import check_trial_placement
from harness.space import load_space
from harness.study import differences, fingerprint, open_study
from harness.trial import TrialSpec, check_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "studies" / "configs" / "tiny.yaml"
SPACE = REPO / "studies" / "spaces" / "lambda_sweep.yaml"


@pytest.fixture(scope="module")
def base():
    return load_config(TINY)


def test_optimised_metric_must_be_one_a_trial_reports(base) -> None:
    check_metrics(base)
    for good in ("select/mean_score", "select/sst2/mean/acc", "select/quick_score", "select/quick/stsb",
                 "val/loss_mlm", "train/loss"):
        check_metrics(load_config(TINY, [f"study.metric={good}"]))
    bad = load_config(TINY, ["study.metric=select/qnli/mean/acc"])
    with pytest.raises(ConfigError, match="study.metric='select/qnli/mean/acc'"):
        check_metrics(bad)
    with pytest.raises(ConfigError, match="one mode"):
        load_config(TINY, ["study.metric=[select/mean_score, val/loss_mlm]"])


def test_selection_never_reads_dev(base) -> None:
    """GLUE dev (probe/*, geom/*, and the reference protocol's ref/*) is the final score: no study may optimise it,
    and ASHA's quick probe is a held-out-train score too."""
    from harness.launch import QUICK_METRIC, check_selection

    assert base.study.metric == ("select/mean_score",) and QUICK_METRIC.startswith("select/")
    check_selection([*base.study.metric, QUICK_METRIC])  # what Optuna and ASHA read (harness.launch.build_tuner)
    with pytest.raises(ConfigError, match="never on GLUE dev"):
        check_selection(["select/mean_score", "probe/mean_score"])
    for dev in ("probe/mean_score", "probe/sst2/mean/acc", "geom/mean_uniformity", "geom/stsb/attention/uniformity",
                "ref/probe/sst2/mean/acc", "probe/quick_score"):
        with pytest.raises(ConfigError, match="never on GLUE dev"):
            check_metrics(load_config(TINY, [f"study.metric={dev}"]))
    with pytest.raises(ConfigError, match="never on GLUE dev"):
        check_metrics(load_config(TINY, ["study.metric=[select/mean_score, geom/mean_uniformity]",
                                         "study.mode=[max, min]"]))


def test_each_protocol_gets_its_suite() -> None:
    """eval.max_dev caps the dev rows of both protocols: a seeded sample for the harness's, the first rows for the
    reference's analysis (reference_n); without it the reference reads as many as the reference code did."""
    capped = load_config(TINY, ["eval.max_dev=300"]).eval.suite_config()
    harness, reference = protocol_suite(capped, "harness"), protocol_suite(capped, "reference")
    assert (harness.protocol, reference.protocol) == ("harness", "reference")
    assert reference.reference_n == 300 and reference.max_dev == harness.max_dev == 300
    assert protocol_suite(load_config(TINY).eval.suite_config(), "reference").reference_n == 2000
    with pytest.raises(ConfigError, match="must be one of"):
        protocol_suite(capped, "paper")


def test_bad_eval_names_and_paths_stop_a_study_before_any_work(tmp_path: Path) -> None:
    space = load_space(SPACE)
    for overrides, message in ((["eval.tasks=[sst2, qnli]"], "eval: unknown task 'qnli'"),
                               (["eval.poolings=[mean, median]"], "eval: unknown pooling median"),
                               ([f"eval.glue_dir={tmp_path / 'nowhere'}"], "GLUE folder .* not found")):
        cfg = load_config(TINY, [*overrides, f"output_dir={tmp_path}"])
        with pytest.raises((ConfigError, FileNotFoundError), match=message), open_study(cfg, space=space):
            pass
    assert not (tmp_path / "studies").exists() and not (tmp_path / "data").exists()  # nothing was written


def test_bad_grids_stop_a_study_before_any_work(tmp_path: Path) -> None:
    cfg = load_config(TINY, [f"output_dir={tmp_path}"])
    for grid, message in (([TrialSpec("a", {"seed": 1}), TrialSpec("a", {"seed": 2})], "distinct labels"),
                          ([TrialSpec("a", {"eval.n_boot": 10})], "shared by all trials"),
                          ([TrialSpec("a", {"optim.learning_rate": 1e-3})], "no such config key")):
        with pytest.raises(ConfigError, match=message), open_study(cfg, grid=grid):
            pass
    with pytest.raises(ValueError, match="not both or neither"), open_study(cfg):
        pass
    grid = [TrialSpec("a", {"seed": 1})]
    for protocols, message in ((("reference", "harness"), "the harness's first"), (("harness", "paper"), "one of")):
        with pytest.raises(ConfigError, match=message), open_study(cfg, grid=grid, protocols=protocols):
            pass
    assert not (tmp_path / "studies").exists()


def test_fingerprint_ignores_resources_and_names_what_differs(base) -> None:
    space = load_space(SPACE)
    resources = load_config(TINY, ["study.max_concurrent=4", "train.cpus_per_worker=0.5", "eval.cpus=3"])
    assert fingerprint(resources, space, None) == fingerprint(base, space, None)  # may resume on another cluster
    other = fingerprint(load_config(TINY, ["optim.batch_size=4"]), load_space(SPACE, ["masking=null"]), None)
    found = differences(fingerprint(base, space, None), other)
    assert f"config.optim.batch_size: was {base.optim.batch_size}, now 4" in found
    assert any(d.startswith("space.masking.enc_mask_scale.0: was ") and d.endswith("now None") for d in found)
    assert fingerprint(base, space, None, ("harness",)) == fingerprint(base, space, None)  # old studies resume
    assert differences(fingerprint(base, space, None), fingerprint(base, space, None, ("harness", "reference"))) \
        == ["protocols: was None, now ['harness', 'reference']"]
    grid = [TrialSpec("a", {"seed": 1})]
    assert differences(fingerprint(base, None, grid), fingerprint(base, None, [TrialSpec("a", {"seed": 2})])) == \
        ["grid: was [{'label': 'a', 'overrides': {'seed': 1}, 'group': None}], "
         "now [{'label': 'a', 'overrides': {'seed': 2}, 'group': None}]"]


def test_in_process_trials_are_refused_on_a_cluster_whose_trials_stay_on_its_head(base) -> None:
    in_process = load_config(TINY, ["train.in_process=true"]).train
    check_trial_placement(in_process, {"CPU": 2.0})  # one machine: the trials train where they run
    check_trial_placement(base.train, {"CPU": 12.0, "head": 1.0})  # Ray Train workers go to the GPU nodes
    with pytest.raises(ConfigError, match=r"train\.in_process=True: a study's trials run in processes on the "
                                          r"cluster's head node .* set train\.in_process=false"):
        check_trial_placement(in_process, {"CPU": 12.0, "GPU": 16.0, "head": 1.0})

"""Configuration: shipped configs load; overrides apply; bad values fail early naming key, value and rule."""

from pathlib import Path

import pytest

from harness.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, override_config
from harness.console import RAY_STARTED

CONFIGS = Path(__file__).resolve().parents[1] / "studies" / "configs"


@pytest.mark.parametrize("name", ["tiny", "small", "paper", "base"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.model.hidden_size % cfg.model.num_heads == 0


def test_paper_config_matches_the_paper() -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_heads) == (6, 512, 8)
    assert (cfg.model.predictor_depth, cfg.model.predictor_width) == (6, 192)
    assert (cfg.data.seq_len, cfg.optim.batch_size, cfg.optim.lr) == (128, 32, 5e-5)
    assert (cfg.objective.ema_start, cfg.objective.ema_end) == (0.996, 1.0)
    assert cfg.masking.enc_mask_scale == (0.65, 0.85) and cfg.masking.pred_mask_scale == (0.10, 0.25)
    assert cfg.masking.num_pred_masks == 2
    assert (cfg.objective.weighting, cfg.objective.lambda_init) == ("learned", 0.5)


def test_dotted_overrides_apply_with_yaml_types() -> None:
    cfg = load_config(CONFIGS / "small.yaml", ["optim.lr=1e-4", "objective.passes=1",
                                                "masking.enc_mask_scale=[0.7, 0.9]", "data.max_documents=null"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.objective.passes == 1
    assert cfg.masking.enc_mask_scale == (0.7, 0.9)
    assert cfg.data.max_documents is None
    assert cfg.model.num_layers == 4  # untouched keys keep the file's values


def test_one_override_rule_for_strings_mappings_pairs_and_deletion() -> None:
    tree = {"a": {"keep": 1}, "pair": [0.1, 0.2]}
    assert apply_overrides(tree, ["a.b.c=3", "a.d=x"]) == {"a": {"keep": 1, "b": {"c": 3}, "d": "x"},
                                                           "pair": [0.1, 0.2]}
    assert tree == {"a": {"keep": 1}, "pair": [0.1, 0.2]}  # a copy: the input is untouched
    assert apply_overrides(tree, {"pair.1": 0.5})["pair"] == [0.1, 0.5]
    assert apply_overrides(tree, ["a.keep=null"]) == {"a": {"keep": None}, "pair": [0.1, 0.2]}
    assert apply_overrides(tree, ["a.keep=null"], null_deletes=True) == {"a": {}, "pair": [0.1, 0.2]}
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides(tree, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"a\.nope: no such config key"):
        apply_overrides(tree, {"a.nope": 1}, existing_only=True)
    with pytest.raises(ConfigError, match="the pair has elements 0 to 1 only"):
        apply_overrides(tree, {"pair.2": 1.0})


def test_override_config_sets_existing_keys_and_validates_again() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    changed = override_config(cfg, {"masking.enc_mask_scale.0": 0.6, "objective.lambda_init": 0.3})
    assert changed.masking.enc_mask_scale == (0.6, cfg.masking.enc_mask_scale[1])
    assert changed.objective.lambda_init == 0.3 and cfg.objective.lambda_init == 0.5
    with pytest.raises(ConfigError, match="no such config key"):
        override_config(cfg, {"objective.lambda": 0.3})
    with pytest.raises(ConfigError, match=r"masking\.enc_mask_scale=\(0\.9, 0\.85\): min must be <= max"):
        override_config(cfg, {"masking.enc_mask_scale.0": 0.9})


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("masking.enc_mask_scale=[0.5, 1.2]", r"masking\.enc_mask_scale=\(0\.5, 1\.2\): both ends must lie in"),
        ("masking.pred_mask_scale=[0.3, 0.1]", r"masking\.pred_mask_scale=\(0\.3, 0\.1\): min must be <= max"),
        ("optim.lr=0", r"optim\.lr=0\.0: must be > 0"),
        ("optim.lr=-1e-3", r"optim\.lr=-0\.001: must be > 0"),
        ("objective.ema_start=1.5", r"objective\.ema_start=1\.5: must lie in \[0, 1\]"),
        ("objective.ema_end=-0.1", r"objective\.ema_end=-0\.1: must lie in \[0, 1\]"),
        ("masking.num_pred_masks=0", r"masking\.num_pred_masks=0: must be >= 1"),
        ("model.hidden_size=250", r"model\.hidden_size=250: must be divisible by num_heads=4"),
        ("objective.name=bert", r"objective\.name='bert': must be one of \['hybrid', 'jepa', 'mlm'\]"),
        ("objective.passes=3", r"objective\.passes=3: must be one of \[1, 2\]"),
        ("optim.batch_size=2.5", r"optim\.batch_size=2\.5: must be an integer"),
        ("optim.lr=fast", r"optim\.lr='fast': must be a finite number"),
        ("optim.lr=.nan", r"optim\.lr=nan: must be a finite number"),
        ("model.tie_mlm_head=1", r"model\.tie_mlm_head=1: must be true or false"),
        ("masking.enc_mask_scale=0.5", r"masking\.enc_mask_scale=0\.5: must be a list of 2 values"),
        ("optim.warmup_steps=500", r"optim\.warmup_steps=500: must lie in \[0, max_steps=300\]"),
        ("data.seq_len=1024", r"data\.seq_len=1024: must be <= model\.max_position_embeddings=512"),
        ("optim.learning_rate=1e-4", r"optim\.learning_rate='1e-4': unknown key; valid keys here: \['lr'"),
        ("optimizer.lr=1e-4", r"optimizer=\{'lr': '1e-4'\}: unknown key; valid keys here: \['model'"),
        ("train.placement=pack", r"train\.placement='pack': must be one of \['STRICT_PACK', 'PACK', 'SPREAD'"),
    ],
)
def test_bad_values_fail_naming_key_value_and_rule(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(CONFIGS / "small.yaml", [override])


def test_in_process_runs_one_worker() -> None:
    assert load_config(CONFIGS / "small.yaml", ["train.in_process=true"]).train.in_process
    with pytest.raises(ConfigError, match=r"train\.in_process=True: runs one worker, in the calling process "
                                          r"\(num_workers=2\): set num_workers=1 or in_process=false"):
        load_config(CONFIGS / "small.yaml", ["train.in_process=true", "train.num_workers=2"])


@pytest.mark.parametrize(
    ("overrides", "placement", "background_upload"),
    [
        ([], "PACK", False),  # CPU: workers packed, checkpoints uploaded before report returns
        (["train.use_gpu=true", "train.num_workers=8"], "STRICT_PACK", True),  # one p5 node
        (["train.use_gpu=true", "train.num_workers=16"], "PACK", True),  # two nodes
        (["train.use_gpu=true", "train.placement=SPREAD", "train.async_checkpoint=false"], "SPREAD", False),
    ],
)
def test_placement_and_checkpoint_upload_follow_the_device_unless_set(overrides: list[str], placement: str,
                                                                      background_upload: bool) -> None:
    train = load_config(CONFIGS / "small.yaml", overrides).train
    assert (train.placement_strategy, train.checkpoint_async) == (placement, background_upload)


def test_missing_file_and_bad_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_config_is_frozen_and_round_trips() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
    assert config_from_dict(cfg.to_dict()) == cfg


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("optim:\n  lr: [1e-3\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+, column \d+: YAML syntax error"):
        load_config(bad)


def test_the_pretrain_cli_reports_bad_input_in_one_line_with_status_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, fragment in ((["optim.lr=-1"], "optim.lr=-1.0: must be > 0"),
                           ([f"data.source={tmp_path}/nowhere"], "nowhere")):
        done = subprocess.run([sys.executable, "-m", "harness.pretrain", "--config", str(CONFIGS / "tiny.yaml"),
                               f"output_dir={tmp_path}", *args], capture_output=True, text=True,
                              cwd=CONFIGS.parents[1])
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr and RAY_STARTED not in done.stderr

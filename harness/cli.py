"""The command lines of harness.pretrain, harness.prepare and the study scripts.

This module imports no torch, Ray, MLflow or pyarrow: each CLI parses its arguments with it before its heavy
imports, so `--help` and usage errors answer at once. `--print-config` prints the resolved config (the dataclass
defaults, then the file, then the dotted overrides) as YAML that `--config` reads back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from harness.config import Config

PRINT_CONFIG_HELP = "print the resolved config (defaults, the file, then the overrides) as YAML and exit"


def pretrain_parser(doc: str) -> argparse.ArgumentParser:
    """`python -m harness.pretrain`; parse with parse_intermixed_args (options may follow the overrides)."""
    parser = argparse.ArgumentParser(prog="python -m harness.pretrain", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config, e.g. studies/configs/small.yaml")
    parser.add_argument("--name", default=None, help="run name (default: <objective>-<time>)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if an interrupted run of this config can be continued")
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 train.num_workers=2")
    return parser


def prepare_parser(doc: str) -> argparse.ArgumentParser:
    """`python -m harness.prepare`: the DataConfig fields as flags."""
    parser = argparse.ArgumentParser(prog="python -m harness.prepare", description=doc)
    parser.add_argument("--source", required=True, help="dir of parquet shards, or hf://owner/name/config")
    parser.add_argument("--tokenizer", required=True, help="dir holding tokenizer.json, or a Hub id")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per row (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.01,
                        help="fraction of documents held out (default: %(default)s)")
    parser.add_argument("--max-documents", type=int, default=None, help="read at most N documents (default: all)")
    parser.add_argument("--out", type=Path, default=Path("prepared"), help="cache root (default: ./prepared)")
    return parser


def study_parser(doc: str, spec_option: str, default_spec: str) -> argparse.ArgumentParser:
    """A study script's command line: --config, the study's YAML (`--space` or `--spec`), --smoke,
    --print-config and dotted overrides."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="base config, e.g. studies/configs/small.yaml")
    parser.add_argument(spec_option, dest="spec", default=default_spec, help=f"the study's YAML ({default_spec})")
    parser.add_argument("--smoke", action="store_true", help="a few tiny trials (use with studies/configs/tiny.yaml)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the study's resolved base config (defaults, the file, the study's settings, "
                        "--smoke, then the overrides) as YAML and exit")
    prefix = f"{spec_option.removeprefix('--')}."
    parser.add_argument("overrides", nargs="*", help=f"dotted config overrides; {prefix}* ones edit {spec_option}")
    return parser


def study_arguments(doc: str, spec_option: str, default_spec: str, argv: list[str] | None) -> argparse.Namespace:
    """Parse a study script's command line (study_parser); `<space|spec>.key=value` overrides edit the study's
    YAML (args.spec_overrides), the others the config (args.config_overrides)."""
    args = study_parser(doc, spec_option, default_spec).parse_args(argv)
    prefix = f"{spec_option.removeprefix('--')}."
    args.config_overrides = [o for o in args.overrides if not o.startswith(prefix)]
    args.spec_overrides = [o.removeprefix(prefix) for o in args.overrides if o.startswith(prefix)]
    return args


def config_yaml(cfg: Config) -> str:
    """The config as YAML, in field order; `load_config` reads it back to an equal Config."""
    tree = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists: safe_dump writes plain YAML lists
    return yaml.safe_dump(tree, sort_keys=False)


def print_config(cfg: Config) -> int:
    """--print-config: the config on stdout; the exit status."""
    print(config_yaml(cfg), end="")
    return 0

"""A run's checkpoint: its files, its format, and the check that a checkpoint fits a config.

A module of its own, importing torch and the encoder's export only: the driver (harness.pretrain: a resume's check,
the export) and a study's trials read checkpoints without importing the training loop's modules (harness.worker,
with torch's compiler stack: seconds of every trial process's start).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.config import Config
from models import export_encoder

if TYPE_CHECKING:
    from objectives import PretrainModule

STATE_FILE = "state.pt"
ENCODER_DIR = "encoder"
CHECKPOINT_FORMAT = 2  # 2: progress.position counts batches of the whole masked stream


@dataclass
class Progress:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    position: int = 0  # batches of the masked stream (all epochs) already consumed


def save_checkpoint(directory: Path, module: PretrainModule, optimizer, scheduler, progress: Progress,
                    cfg: Config, export: bool) -> None:
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "progress": dataclasses.asdict(progress),
                "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, directory / STATE_FILE)
    if export:
        export_encoder(module.nets.encoder, directory / ENCODER_DIR)


RUN_CHECKPOINT = re.compile(r"checkpoint_(\d{8})")  # an in-process run's checkpoint folder: checkpoint_<step>


def write_run_checkpoint(run_storage: Path, step: int, keep: int, write: Callable[[Path], None]) -> Path:
    """A checkpoint of an in-process run (train.in_process) in its run's storage folder, kept as Train's controller
    keeps a run's checkpoints: `write` fills a partial folder that is then renamed, so a crash never leaves a half
    checkpoint where a rerun looks; the oldest beyond `keep` are deleted."""
    final = run_storage / f"checkpoint_{step:08d}"
    partial = run_storage / f"{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    shutil.rmtree(final, ignore_errors=True)  # a rerun that failed after this step wrote it once already
    partial.rename(final)
    for old in run_checkpoints(run_storage)[:-keep]:
        shutil.rmtree(old)
    return final


def checkpoint_step(directory: Path) -> int:
    """The step of an in-process run's checkpoint, from its folder's name."""
    return int(RUN_CHECKPOINT.fullmatch(directory.name).group(1))


def run_checkpoints(run_storage: Path) -> list[Path]:
    """An in-process run's complete checkpoints, oldest first."""
    found = [p for p in run_storage.glob("checkpoint_*") if RUN_CHECKPOINT.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint of this harness (no {STATE_FILE}); "
                                "pass a checkpoint_* directory from a run's Ray results")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only
    except Exception as e:  # noqa: BLE001 - torch raises several types for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable checkpoint of this harness ({type(e).__name__}: {e})") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this harness reads {CHECKPOINT_FORMAT}")
    return state


def check_compatible(saved: dict[str, Any], cfg: Config) -> None:
    """A checkpoint must come from the same model and objective (the parameter shapes depend on them)."""
    ours = cfg.to_dict()
    keys = [("model", k) for k in ours["model"]] + [("objective", "name"), ("objective", "weighting")]
    diffs = [f"{a}.{b}: checkpoint {saved[a].get(b)!r}, config {ours[a][b]!r}" for a, b in keys
             if saved.get(a, {}).get(b) != ours[a][b]]
    if diffs:
        raise ValueError("checkpoint comes from another config: " + "; ".join(diffs)
                         + ". Resume with the checkpoint's config, or start a new run.")

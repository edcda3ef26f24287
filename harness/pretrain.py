"""Pre-training on Ray Train: the CLI and driver that prepare the data, open the MLflow run and launch the one
training loop (harness.worker_entry.train_loop_per_worker, then harness.worker) on Ray Train's workers.

    python -m harness.pretrain --config studies/configs/small.yaml [dotted.key=value ...]

A rerun of the same command continues an interrupted run from its last checkpoint, under the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cli import pretrain_parser, print_config

if __name__ == "__main__":  # --help and usage errors answer here, before torch and Ray load (seconds)
    pretrain_parser(__doc__).parse_intermixed_args()

import ray
import ray.data
import ray.train
import torch
from ray import cloudpickle

from harness import tracking
from harness.checkpoint import ENCODER_DIR, check_compatible, checkpoint_step, read_checkpoint, run_checkpoints
from harness.config import Config, ConfigError, load_config, resolve_location, resolve_path
from harness.console import init_ray, own_logging, quiet_libraries
from harness.costs import warn_if_costly
from harness.launch import build_trainer
from harness.prepare import load_tokenizer, prepare, read_manifest, read_prepared
from harness.stream import MaskingStage, epochs_needed, masked_datasets
from harness.train_callbacks import ForwardEvalReports, InProcessRun, ReportToMLflow
from harness.worker_entry import train_in_process, train_loop_per_worker
from objectives import mask_plan
from objectives.masking import SpecialTokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedRun:
    """What every run (or trial) of one config shares: checked inputs and the prepared token shards."""

    cfg: Config  # with data.source and data.tokenizer resolved
    data_dir: Path
    tokenizer: Any  # the loaded tokenizer: its special ids for the masks, saved beside every exported encoder
    tracking_uri: str


def prepare_run(cfg: Config) -> PreparedRun:
    """Validate everything cheap first (tokenizer, vocabulary, tracking, resume checkpoint), then start
    Ray if needed and prepare the data (a no-op when the cache already holds it)."""
    output = resolve_path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    data_cfg = dataclasses.replace(cfg.data, source=resolve_location(cfg.data.source),
                                   tokenizer=resolve_location(cfg.data.tokenizer))
    tokenizer = load_tokenizer(data_cfg.tokenizer)
    if len(tokenizer) > cfg.model.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                         f"({len(tokenizer)} at {data_cfg.tokenizer}); set model.vocab_size={len(tokenizer)}")
    uri = cfg.tracking.uri or tracking.default_uri(output)
    tracking.check_reachable(uri)
    if cfg.train.resume_from:
        check_compatible(read_checkpoint(cfg.train.resume_from)["config"], cfg)
    data_dir = prepare(data_cfg, output / "data")  # checks the source before any Ray work; a cache hit is free
    init_ray()  # a local Ray, or inside `ray job submit` the cluster at RAY_ADDRESS
    return PreparedRun(dataclasses.replace(cfg, data=data_cfg), data_dir, tokenizer, uri)


def masking_stage(cfg: Config, prepared: PreparedRun) -> MaskingStage:
    return MaskingStage(cfg.masking, mask_plan(cfg), SpecialTokens.from_tokenizer(prepared.tokenizer),
                        cfg.optim.batch_size, cfg.seed)


def masked_stream(cfg: Config, prepared: PreparedRun, stage: MaskingStage) -> dict[str, ray.data.Dataset]:
    """The Train dataset: the prepared train split with the masks of `cfg`'s objective drawn by Ray Data."""
    sequences = read_manifest(prepared.data_dir)["counts"]["train"]["sequences"]
    epochs = epochs_needed(cfg.optim.max_steps, cfg.optim.batch_size, cfg.train.num_workers, sequences)
    datasets = masked_datasets(read_prepared(prepared.data_dir, ["train"]), stage, epochs,
                               batches=cfg.optim.max_steps * cfg.train.num_workers)
    # A fixed block order, on a Train worker (build_trainer's DataConfig asks it too) or in process: one worker's data
    # order, and so a resumed run, is reproducible.
    datasets["train"].context.execution_options.preserve_order = True
    return datasets


def train(cfg: Config, prepared: PreparedRun, run: tracking.RunHandle, name: str, run_dir: Path, storage: Path,
          report_to_tune: bool = False, quick_tasks: list | None = None,
          step_hook: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Train one run on Ray (logging to the open MLflow `run`), export its encoder to run_dir/encoder.

    `cfg` may differ from prepared.cfg in anything but the data section (a study's trial). A Train run
    whose `name` already has checkpoints under `storage` resumes from the latest one (Train V2; in process, the
    latest of harness.checkpoint.run_checkpoints).
    `report_to_tune`: a study's trial; its eval steps' reports go on to Tune.
    `quick_tasks` (eval.quick.build_quick_probe): run the quick probe on rank 0 at every eval step.
    `step_hook(step, rank, world)`: called before every step (tests inject faults with FailOnceAt)."""
    if cfg.data != prepared.cfg.data:
        raise ValueError("the data section of a trial must equal the prepared one; prepare the data per config")
    ray.data.DataContext.get_current().enable_progress_bars = False  # datasets copy it: quiet worker logs
    run_dir.mkdir(parents=True, exist_ok=True)
    stage = masking_stage(cfg, prepared)
    uri = prepared.tracking_uri
    tune_max_steps = cfg.optim.max_steps if report_to_tune else None
    in_process = InProcessRun(str(storage / name), uri, run.run_id, tune_max_steps) if cfg.train.in_process else None
    # Train's controller unpickles the loop's config with the run's context before it starts the workers; the
    # masking stage and the quick probe's tasks would make it import torch and the objectives (seconds of every
    # run's start). So they travel as bytes, which only the workers unpickle (harness.worker_entry).
    pickled = cloudpickle.dumps({"quick_probe": quick_tasks, "step_hook": step_hook, "in_process": in_process,
                                 "held_out": (str(prepared.data_dir), stage)})
    callbacks = [] if in_process else [ReportToMLflow(uri, run.run_id),
                                       *([ForwardEvalReports(cfg.optim.max_steps)] if report_to_tune else [])]
    fit_called_at = time.time()
    loop_config = {"config": cfg.to_dict(), "name": name, "pickled": pickled, "fit_called_at": fit_called_at}
    if in_process:
        checkpoint = train_here(cfg, loop_config, masked_stream(cfg, prepared, stage), in_process)
    else:
        trainer = build_trainer(cfg, train_loop_per_worker, loop_config, masked_stream(cfg, prepared, stage), name,
                                storage, callbacks)
        checkpoint = trainer.fit().checkpoint
    fit_wall_s = time.time() - fit_called_at
    # Every report reached MLflow through the callback; Ray's result only keeps the metrics that
    # came with a checkpoint, and a diverged run ends without one.
    metrics = tracking.read_run(uri, run.run_id)["metrics"]
    summary: dict[str, Any] = {"run": name, "mlflow_run_id": run.run_id, "tracking_uri": uri,
                               "steps": int(metrics.get("step", 0))}
    if metrics.get("diverged"):
        note = f"diverged at step {int(metrics['diverged_at_step'])}: the loss became NaN/inf"
        run.set_outcome("diverged", note)
        return {**summary, "outcome": "diverged", "note": note}
    exported = time.time()
    encoder = run_dir / ENCODER_DIR  # HF format with its tokenizer: what eval.run reads
    with checkpoint.as_directory() as checkpoint_dir:
        shutil.copytree(Path(checkpoint_dir) / ENCODER_DIR, encoder, dirs_exist_ok=True)
    prepared.tokenizer.save_pretrained(encoder)
    tracking.log_artifact(encoder, ENCODER_DIR)
    tracking.log_metrics({"perf/fit_wall_s": fit_wall_s, "perf/export_s": time.time() - exported})
    run.set_outcome("finished", f"{metrics.get('step')} steps")
    keys = ("train/loss", "train/loss_mlm", "train/loss_jepa", "train/lambda", "val/loss_mlm",
            "val/mlm_acc", "val/loss_jepa", "perf/tokens_per_s", "perf/mfu", "perf/data_wait")
    return {**summary, "outcome": "finished", **{k: round(metrics[k], 4) for k in keys if k in metrics},
            "checkpoint": checkpoint.path, "encoder": str(encoder)}


def train_here(cfg: Config, loop_config: dict[str, Any], stream: dict[str, ray.data.Dataset],
               in_process: InProcessRun) -> ray.train.Checkpoint | None:
    """The loop in this process (train.in_process), without Ray Train: what Train's controller would do for its one
    worker is done here and in InProcessRun. A failed loop restarts from the run's last checkpoint (or its
    train.resume_from), up to train.max_failures times. Returns the last checkpoint (a finished run's holds the
    encoder; a diverged run may have none), as Ray Train's result does."""
    storage = Path(in_process.storage)
    for attempt in range(cfg.train.max_failures + 1):
        saved = run_checkpoints(storage)
        # Trained to its last step already (it stopped in its export or its last report): the stream holds no batch
        # past that step, so the loop does not run again.
        if saved and checkpoint_step(saved[-1]) >= cfg.optim.max_steps:
            logger.info("%s: trained to step %d already; exporting its last checkpoint", loop_config["name"],
                        cfg.optim.max_steps)
            break
        if saved:
            resumed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume_from=str(saved[-1])))
            loop_config = {**loop_config, "config": resumed.to_dict()}
        try:
            train_in_process(loop_config, stream["train"], cfg.train.use_gpu)
            break
        except Exception as e:
            if attempt == cfg.train.max_failures:
                raise
            logger.warning("%s: the loop failed (%s: %s); restarting it from its last checkpoint (restart %d of "
                           "train.max_failures=%d)", loop_config["name"], type(e).__name__, e, attempt + 1,
                           cfg.train.max_failures)
    saved = run_checkpoints(storage)
    return ray.train.Checkpoint.from_directory(str(saved[-1])) if saved else None


RUN_KEY_TAG = "config_key"  # a run's identity for resuming on rerun


def config_key(cfg: Config) -> str:
    """A hash of the config without what a rerun may change (resources, recovery): the same command, or the same
    config with other resources, finds its interrupted run again."""
    tree = cfg.to_dict()
    for key in ("cpus_per_worker", "torch_threads", "max_failures", "controller_failure_limit"):
        tree["train"].pop(key)
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_pretraining(cfg: Config, run_name: str | None = None, fresh: bool = False,
                    step_hook: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """One pre-training run: prepare, train on Ray under its own MLflow run, export, summarise.

    A run of the same config (and name, if given) that was interrupted (Ctrl-C, a crash, a reboot) is continued
    from its last checkpoint under the same MLflow run, as a rerun of the same command expects; `fresh` starts a
    new run instead."""
    if cfg.train.in_process and cfg.train.use_gpu and not torch.cuda.is_available():
        raise ConfigError("train.in_process=True with train.use_gpu=True: this process sees no CUDA GPU; run it on a "
                          "GPU machine, or set train.in_process=false to train on Ray Train's GPU workers")
    prepared = prepare_run(cfg)
    cfg = prepared.cfg
    warn_if_costly(cfg)  # logs when checkpoints and validation passes would take over 5% of the run's time
    output = resolve_path(cfg.output_dir)
    key = config_key(cfg)
    tags = {RUN_KEY_TAG: key, **({"mlflow.runName": run_name} if run_name else {})}
    previous = None if fresh else tracking.find_unfinished_run(prepared.tracking_uri, cfg.tracking.experiment, tags)
    run_id = None
    if previous is not None:
        run_id, run_name, status = previous
        logger.info("continuing run %s (%s, MLflow run %s) from its last checkpoint; pass --fresh to start over",
                    run_name, status.lower(), run_id)
    run_name = run_name or f"{cfg.objective.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracking.training_run(prepared.tracking_uri, cfg.tracking.experiment, run_name, cfg.to_dict(),
                               tags={RUN_KEY_TAG: key}, run_id=run_id) as run:
        return train(cfg, prepared, run, run_name, output / "runs" / run_name, output / "ray_results",
                     step_hook=step_hook)


def main(argv: list[str] | None = None) -> int:
    args = pretrain_parser(__doc__).parse_intermixed_args(argv)  # options may follow the overrides
    own_logging()
    quiet_libraries()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            return print_config(cfg)
        summary = run_pretraining(cfg, run_name=args.name, fresh=args.fresh)
    except (ConfigError, FileNotFoundError, tracking.TrackingError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Ray Train aborts the run and Ray's get raises SystemExit
        command = shlex.join(["python", "-m", "harness.pretrain", *(sys.argv[1:] if argv is None else argv)])
        print(f"interrupted; the run continues from its last checkpoint when you run the same command again:\n"
              f"  {command}", file=sys.stderr)
        return 130
    print("\n".join(f"{k:>22}: {v}" for k, v in summary.items()))
    if summary["outcome"] == "finished":
        print(next_steps(summary))
    return 0 if summary["outcome"] == "finished" else 1


def next_steps(summary: dict[str, Any]) -> str:
    """What to run after a finished run: the evaluation of its encoder and the MLflow UI on its tracking store."""
    lines = ["next:", f"  evaluate the encoder:  python -m eval.run --encoder {shlex.quote(str(summary['encoder']))}"]
    uri = str(summary["tracking_uri"])
    if not uri.startswith(("http://", "https://")):
        lines.append(f"  start the MLflow UI:   mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1")
    lines.append(f"  this run in MLflow:    {tracking.ui_link(uri, summary['mlflow_run_id'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    # Run through the importable module, so that what Ray pickles (the loop, the callbacks) refers to modules.
    from harness.pretrain import main as _main

    raise SystemExit(_main())

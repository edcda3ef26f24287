"""What a person sees on the console: the harness's own lines, Ray's start-up chatter turned down, and one
progress line per log step.

Ray prints every Ray process's INFO logs on the driver (the Train controller's resource requests, every
`ray.train.report`, Ray Data's execution plans and progress tables), which buries the run's own lines. The
harness runs Ray's loggers at WARNING (the driver's `ray` logger, Ray Train's through the trainer's
`RunConfig(logging_config=...)`, Ray Data's through `RAY_DATA_LOG_LEVEL`) and gives its own loggers (`harness`,
`eval`) a handler of their own, so that their INFO lines still show, once. Warnings and errors of Ray still show, except
the lines in `KNOWN_NOISE`: messages that Ray logs on every run about its own internals (nothing the user did or
can change), and on a local Ray those in `LOCAL_NOISE`. `RAY_DEDUP_LOGS_SKIP_REGEX`, if set, replaces that list.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import TextIO

OWN_LOGGERS = ("harness", "eval")
KNOWN_NOISE = "|".join([
    # Ray Data's and Ray Train's own actors (MapWorker, PreemptionWatcher) are created with their arguments in the
    # object store; Ray core logs this at ERROR level on every run.
    r"has constructor arguments in the object store and max_restarts",
    # Ray Data's warning in every non-interactive process that streams a dataset.
    r"Progress bars disabled\. To enable",
])
# The raylet's warning once it has started 4x as many worker processes as the node has CPUs: on a small machine every
# study crosses it (a trial is a Tune actor, Train's controller and workers, Ray Data's actors and tasks). Skipped on a
# local Ray only: on a cluster it may point at leaked actors or tasks blocked in ray.get.
LOCAL_NOISE = r"PYTHON worker processes have been started on node"
LOG_FORMAT = "%(message)s"
RAY_STARTED = "Ray cluster at"  # the line init_ray logs
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray's node address is 127.0.0.1
IDLE_WORKERS_KEPT = 8  # how many idle worker processes a local Ray on fewer CPUs may keep (local_ray_environment)


def starts_local_ray() -> bool:
    """Whether this driver starts a Ray of its own (`RAY_ADDRESS` unset or `local`) rather than joining a cluster."""
    return os.environ.get("RAY_ADDRESS", "") in ("", "local")


def quiet_ray_log_forwarding() -> None:
    """Skip `KNOWN_NOISE` (and on a local Ray `LOCAL_NOISE`) when the driver prints the lines of Ray's processes, and
    set Ray Data's loggers to WARNING (no execution plans or progress tables; `RAY_DATA_LOG_LEVEL=INFO` brings them
    back). Ray reads both at import; a local Ray's processes inherit them."""
    noise = f"{KNOWN_NOISE}|{LOCAL_NOISE}" if starts_local_ray() else KNOWN_NOISE
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", noise)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")


def local_ray_environment() -> None:
    """How a local Ray that the harness starts behaves (where `RAY_ADDRESS` is unset or `local`; its processes
    inherit the driver's environment): it listens on 127.0.0.1 only, reads parquet footers with one actor, starts no
    preemption watcher and lets more idle worker processes wait for reuse.

    Loopback: Ray 2.60 binds its servers (GCS, raylet, dashboard, agents, workers) to loopback when the node's address
    is 127.0.0.1, but `ray.init()` replaces 127.0.0.1 by the machine's address, except where Ray disables multi-node
    clusters (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the default on macOS and Windows); Ray reads it at import. Set
    the variable to 1 for a local Ray that other machines can reach. The Train workers' process group follows
    (harness.loopback). A driver that joins a cluster (`ray job submit`, a cluster's head) takes its node's address
    from the cluster, and its cluster's settings.

    Footers: Ray Data lists a parquet directory with `RAY_DATA_PARQUET_FOOTER_NUM_ACTORS` actors (32 by default, each
    a process) when it reads with its default reader (preparation does): on one machine they cost more to start than
    a few shards take to read.

    Preemption: Ray Train starts a `PreemptionWatcher` actor (a process) whenever it starts a worker group, to report
    the nodes that a cloud takes back; one machine has none to lose, so `RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`.

    Idle processes: the raylet ends idle worker processes beyond its soft limit (`RAY_num_workers_soft_limit`, the
    node's CPUs by default); it never starts any to reach it. On 2 CPUs a study's next trial then started a new process
    for every Ray Data task and for its evaluation task, each importing torch again; with up to `IDLE_WORKERS_KEPT`
    idle, they ran in the processes of the trial before. Each idle process keeps its imports (torch: a few hundred
    MB). A machine with that many CPUs (those this process may run on) keeps Ray's default."""
    if starts_local_ray():
        os.environ.setdefault(LOOPBACK_SWITCH, "0")
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        if usable_cpus() < IDLE_WORKERS_KEPT:
            os.environ.setdefault("RAY_num_workers_soft_limit", str(IDLE_WORKERS_KEPT))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def own_logging(stream: TextIO | None = None, fmt: str = LOG_FORMAT) -> None:
    """The harness's and eval's loggers print their INFO lines (on `stream`, default stderr) whatever Ray does to the
    root logger, each line once. The first call in a process sets the stream and format."""
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not logger.handlers:
            handler = logging.StreamHandler(stream or sys.stderr)
            handler.setFormatter(logging.Formatter(fmt))
            logger.addHandler(handler)


def quiet_libraries() -> None:
    """In the driver and in a Train worker: no per-file progress bars when transformers writes a model, no MLflow
    schema chatter, and Ray Train's per-report INFO line (its logger is named by file path, so Ray Train's own
    `LoggingConfig` level misses it) kept out of the console."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if "/ray/train/" in name.replace("\\", "/"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # in process (train.in_process): a line per report


def init_ray() -> None:
    """Start a local Ray (or connect to `RAY_ADDRESS`, e.g. inside `ray job submit`), the driver's `ray` logger at
    WARNING, and log where it is."""
    import ray

    if ray.is_initialized():
        return
    # Not ray.init(logging_config=...): with a job-wide logging config Ray drops the "(RayTrainWorker pid=...)" prefix
    # of forwarded lines. Ray Train's level is set by the trainer's RunConfig, Ray Data's by RAY_DATA_LOG_LEVEL.
    logging.getLogger("ray").setLevel(logging.WARNING)
    context = ray.init()
    node = context.address_info["node_ip_address"]
    if os.environ.get(LOOPBACK_SWITCH) == "0" and not is_loopback(node):
        logging.getLogger(__name__).warning(
            "Ray's node address is %s, so its ports are reachable from the network: a cluster started by `ray start`,"
            " or Ray imported before the harness (import harness first for a local Ray on 127.0.0.1)", node)
    dashboard = f", dashboard http://{context.dashboard_url}" if context.dashboard_url else ""
    logging.getLogger(__name__).info("%s %s%s", RAY_STARTED, context.address_info["gcs_address"], dashboard)


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def progress_line(step: int, total: int, elapsed_s: float, steps_this_run: int, metrics: dict[str, float]) -> str:
    """One line per log step: where the run is, how long it has taken and will take, and what it is learning.

    `elapsed_s` and `steps_this_run` count from this process's first step (a resumed run's ETA uses its own rate)."""
    remaining = (total - step) * elapsed_s / max(steps_this_run, 1)
    parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)",
             f"elapsed {clock(elapsed_s)}, ETA {clock(remaining)}",
             f"loss {metrics.get('train/loss', float('nan')):.4f}"]
    terms = [f"{name} {metrics[key]:.4f}" for name, key in (("jepa", "train/loss_jepa"), ("mlm", "train/loss_mlm"))
             if key in metrics]
    if terms:
        parts[-1] += f" ({', '.join(terms)})"
    if "train/lambda" in metrics and "train/loss_jepa" in metrics and "train/loss_mlm" in metrics:
        parts.append(f"λ {metrics['train/lambda']:.3f}")
    parts.append(f"{metrics['perf/tokens_per_s']:.0f} tok/s, MFU {metrics['perf/mfu']:.2f}, "
                 f"data-wait {100 * metrics['perf/data_wait']:.1f}%")
    return " | ".join(parts)

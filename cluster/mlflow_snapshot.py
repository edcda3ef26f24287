"""Copy the head's live MLflow run index (sqlite) to shared storage, consistently, so it outlives the head.

    python cluster/mlflow_snapshot.py ~/mlflow/mlflow.db /mnt/pnr/mlflow/mlflow.db

sqlite must not be written over NFS (its locks are not reliable there), so the server keeps the database on the
head's disk and this script, run by cron on the head (cluster.yaml), copies it: sqlite's online backup API reads a
consistent state while the server keeps writing, into a local temporary file, which is then copied next to the
destination and renamed over it (readers of the destination never see a partial file). It refuses to replace a
destination holding more runs than the source (a fresh, empty database on a new head must not overwrite the
index), unless --force.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

logger = logging.getLogger(__name__)


def run_count(path: Path) -> int:
    """Rows of MLflow's `runs` table (0 for a database without one)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.OperationalError:  # no such table: not initialised yet
            return 0


def snapshot(source: Path, destination: Path, force: bool = False) -> int:
    """Copy `source` to `destination` atomically; returns the number of runs copied."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no database to copy")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "snapshot.db"
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        with closing(src), closing(sqlite3.connect(local)) as dst:
            src.backup(dst)
        runs = run_count(local)
        if not force and destination.is_file() and run_count(destination) > runs:
            raise RuntimeError(f"{destination} holds more runs than {source} ({run_count(destination)} > {runs}): "
                               "not replaced (restore it, or pass --force)")
        partial = destination.with_name(f".{destination.name}.partial")
        shutil.copyfile(local, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, destination)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the live sqlite database (the server's --backend-store-uri)")
    parser.add_argument("destination", type=Path, help="the copy on shared storage")
    parser.add_argument("--force", action="store_true", help="replace a destination that holds more runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        runs = snapshot(args.source.expanduser(), args.destination.expanduser(), args.force)
    except (OSError, RuntimeError, sqlite3.Error) as e:
        logger.error("snapshot failed: %s", e)
        return 1
    logger.info("copied %d runs to %s", runs, args.destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writing and reading an evaluation folder: tables (CSV + parquet) and plots.

An `eval.run` folder holds results.{csv,parquet} (the tidy table), replicates.parquet (bootstrap
replicates, for paired comparisons), spectra.parquet (eigen-spectra, for plots) and plots/.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from eval.plots import plot_all

logger = logging.getLogger(__name__)


def write_table(df: pd.DataFrame, out_dir: Path, name: str) -> None:
    df.to_csv(out_dir / f"{name}.csv", index=False)
    df.to_parquet(out_dir / f"{name}.parquet", index=False)


def write_run(results: pd.DataFrame, replicates: pd.DataFrame, spectra: pd.DataFrame, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(results, out_dir, "results")
    replicates.to_parquet(out_dir / "replicates.parquet", index=False)
    spectra.to_parquet(out_dir / "spectra.parquet", index=False)
    plot_all(results, spectra, out_dir / "plots")
    logger.info("wrote %s/results.csv, results.parquet, replicates.parquet, spectra.parquet, plots/", out_dir)


def is_run(path: Path) -> bool:
    """An eval.run folder, or a results table inside one."""
    folder = path if path.is_dir() else path.parent
    return (folder / "results.parquet").is_file() and (path.is_dir() or path.suffix in (".csv", ".parquet"))


def read_run(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, replicates, spectra) of an eval.run folder or of its results table. Folders written before the
    `protocol` column existed hold harness-protocol rows and get protocol="harness"."""
    folder = path if path.is_dir() else path.parent
    results = pd.read_parquet(folder / "results.parquet")  # the CSV beside it holds the same table
    if not (folder / "replicates.parquet").is_file():
        raise FileNotFoundError(f"{folder} has no replicates.parquet: re-run eval.run to get paired comparisons")
    spectra_file = folder / "spectra.parquet"
    spectra = pd.read_parquet(spectra_file) if spectra_file.is_file() else pd.DataFrame()
    tables = (results, pd.read_parquet(folder / "replicates.parquet"), spectra)
    return tuple(t if t.empty or "protocol" in t.columns else t.assign(protocol="harness")  # type: ignore[return-value]
                 for t in tables)

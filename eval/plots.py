"""PNG plots of results tables (one or many encoders, either protocol), drawn on matplotlib Agg canvases.

Figures are built with the object API (no pyplot), so no global backend or state is touched. Rows of the reference
protocol are labelled "<encoder> (ref)"; families other than probe and geom are columns "<family>:<metric>" of the
heat maps, and the draw spreads (`*_draw_std`) are left out of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Encoder labels that keep the two protocols apart."""
    if df.empty or "protocol" not in df.columns:
        return df
    ref = df["protocol"] == "reference"
    return df.assign(encoder=df["encoder"].where(~ref, df["encoder"] + " (ref)"))


def plot_all(results: pd.DataFrame, spectra: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results, spectra = _labelled(results), _labelled(spectra)
    paths = [plot_alignment_uniformity(results, out_dir / "alignment_uniformity.png")]
    if not spectra.empty:
        paths.append(plot_spectra(spectra, out_dir / "eigen_spectra.png"))
    for pooling in results["pooling"].unique():
        paths.append(plot_heatmap(results[results["pooling"] == pooling], out_dir / f"heatmap_{pooling}.png"))
    return paths


def plot_spectra(spectra: pd.DataFrame, path: Path) -> Path:
    """Log-log covariance eigen-spectrum per task, one line per encoder x pooling."""
    tasks = list(spectra["task"].unique())
    fig = Figure(figsize=(4 * len(tasks), 3.5))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for (encoder, pooling), s in spectra[spectra["task"] == task].groupby(["encoder", "pooling"], sort=False):
            s = s[s["eigenvalue"] > s["eigenvalue"].max() * 1e-10]  # drop numerically zero directions
            ax.loglog(s["rank"], s["eigenvalue"], label=f"{encoder}/{pooling}", lw=1)
        ax.set(title=task, xlabel="rank", ylabel="eigenvalue")
    axes[0][-1].legend(fontsize=6)
    return _save(fig, path)


def plot_alignment_uniformity(results: pd.DataFrame, path: Path) -> Path:
    """Alignment vs uniformity (lower is better for both), one point per encoder x task x pooling."""
    geom = results[results["family"] == "geom"]
    wide = geom.pivot_table(index=["encoder", "task", "pooling"], columns="metric", values="value").reset_index()
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for (encoder, pooling), g in wide.groupby(["encoder", "pooling"], sort=False):
        ax.scatter(g["uniformity"], g["alignment"], label=f"{encoder}/{pooling}", s=20)
        for row in g.itertuples():
            ax.annotate(row.task, (row.uniformity, row.alignment), fontsize=6)
    ax.set(xlabel="uniformity (t=2)", ylabel="alignment (alpha=2)", title="alignment vs uniformity")
    ax.legend(fontsize=6)
    return _save(fig, path)


# Which way is better, for the heat maps' colours: +1 higher, -1 lower, absent: neither (a description, e.g. the
# spectrum's power-law exponent and its fit, or the lexical probe, whose direction is the question studied).
BETTER = {"acc": 1, "spearman": 1, "pearson": 1, "effective_rank": 1, "spectral_entropy": 1, "stable_rank": 1,
          "isoscore": 1, "uniformity": -1, "uniformity_centered": -1, "alignment": -1, "mean_cosine": -1}
ARROWS = {1: " ↑", -1: " ↓", 0: " ·"}


def better_scaled(wide: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each column min-max scaled to 0..1, turned so that 1 is the best value where the metric has a direction;
    and the directions (+1, -1, 0) of the columns."""
    directions = np.array([BETTER.get(str(m).split(":")[-1], 0) for m in wide.columns])
    scaled = ((wide - wide.min()) / (wide.max() - wide.min()).replace(0, 1)).to_numpy(dtype=float)
    return np.where(directions < 0, 1 - scaled, scaled), directions


def plot_heatmap(results: pd.DataFrame, path: Path) -> Path:
    """Rows encoder/task, columns metrics; colour = the value scaled to 0..1 within its column, turned so that
    bright is better where a metric has a better direction (↑ higher, ↓ lower; · none: bright is higher)."""
    results = results[~results["metric"].str.endswith("_draw_std")]
    plain = results["family"].isin(["probe", "geom"])
    results = results.assign(metric=results["metric"].where(plain, results["family"] + ":" + results["metric"]))
    wide = results.pivot_table(index=["encoder", "task"], columns="metric", values="value", sort=False)
    scaled, directions = better_scaled(wide)
    fig = Figure(figsize=(2.5 + 0.7 * wide.shape[1], 2.2 + 0.35 * wide.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(scaled, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(wide.to_numpy(dtype=float)):
        if not np.isnan(v):
            color = "k" if scaled[i, j] > 0.6 else "w"
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6, color=color)
    labels = [f"{m}{ARROWS[d]}" for m, d in zip(wide.columns, directions, strict=True)]
    ax.set_xticks(range(wide.shape[1]), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(wide.shape[0]), [f"{e}/{t}" for e, t in wide.index], fontsize=7)
    ax.set_title(f"pooling: {results['pooling'].iloc[0]}: numbers are values; colour is scaled within each column, "
                 "bright = better (↑ higher is better, ↓ lower is better, · no direction: bright = higher)", fontsize=8)
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, ticks=[0, 1])
    bar.ax.set_yticklabels(["worst", "best"], fontsize=7)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path

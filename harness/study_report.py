"""A study's summary: the trial table (read back from MLflow, so it survives resumes), the best config or
the Pareto front, Optuna's hyperparameter importances, plots and report.md, all logged to the parent run.

Trials are ranked, and the best config and the Pareto front chosen, on the study's selection metrics only
(`study.metric`, which `harness.launch.check_selection` keeps to select/*, train/* and val/*). The final dev score
of a finished trial (FINAL_METRICS) is shown beside them and never read by any choice."""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness import tracking
from harness.config import Config, override_config
from harness.launch import QUICK_METRIC, check_selection
from harness.space import Space

logger = logging.getLogger(__name__)

SHOWN_METRICS = (QUICK_METRIC, "val/loss_mlm", "val/loss_jepa", "train/lambda", "perf/trial_wall_s")
FINAL_METRICS = ("probe/mean_score",)  # GLUE dev: the final score of a finished trial, shown, never selected on


@dataclass
class StudyResult:
    """What a study's run leaves: where it lives, its MLflow parent run, and one row per trial."""

    study_dir: Path
    parent_run_id: str
    tracking_uri: str
    table: pd.DataFrame  # one row per trial: label, outcome, searched values, metrics (trial_table)
    wall_s: float


def param_value(text: str) -> Any:
    """A logged parameter back as a value: 0.5, 2, "learned", and 1e+30 (which YAML 1.1 reads as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def trial_table(uri: str, parent_run_id: str, cfg: Config) -> pd.DataFrame:
    """One row per child run: label, outcome, the trial's overrides (trial.*), the study's metrics, the final dev
    score; sorted by the first selection metric."""
    check_selection(cfg.study.metric)
    shown = list(dict.fromkeys([*cfg.study.metric, *SHOWN_METRICS, *FINAL_METRICS]))
    rows = []
    for run in tracking.child_runs(uri, parent_run_id):
        tags, metrics = run["tags"], run["metrics"]
        row: dict[str, Any] = {"label": tags.get("label", run["name"]), "group": tags.get("group"),
                               "outcome": tags.get("outcome", run["status"].lower()),
                               "steps": int(metrics.get("step", 0)), "run_id": run["run_id"]}
        row.update({k: param_value(v) for k, v in sorted(run["params"].items()) if k.startswith("trial.")})
        row.update({m: metrics.get(m, math.nan) for m in shown})
        rows.append(row)
    columns = ["label", "group", "outcome", "steps", "run_id", *shown]
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)  # no trial ran: the columns still exist
    if table.empty:
        return table
    primary, mode = cfg.study.metric[0], cfg.study.mode[0]
    return table.sort_values(primary, ascending=mode == "min", na_position="last").reset_index(drop=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The trial table as a person reads it: the scores first, then the searched values under short names
    (`trial.masking.enc_mask_scale.0` -> `enc_mask_scale.0`, unless two would collide), no run ids."""
    table = table.drop(columns=["run_id"], errors="ignore")
    params = [c for c in table.columns if c.startswith("trial.")]
    short = {c: c.removeprefix("trial.").split(".", 1)[-1] for c in params}
    if len(set(short.values())) < len(short):
        short = {c: c.removeprefix("trial.") for c in params}
    return table[[c for c in table.columns if c not in params] + params].rename(columns=short)


# ---------------------------------------------------------------- reports as self-contained HTML

HTML_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
              "font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
              "img{max-width:100%}code,pre{background:#f3f3f3}")


def inline_html(text: str) -> str:
    """Markdown's **bold** and `code` in HTML (the rest escaped)."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def png_img(path: Path, alt: str) -> str:
    """An <img> with the PNG inlined as a data URI: the page needs no other file (MLflow's artifact view shows
    an HTML artifact alone, so relative image links would not load there)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{body}</body></html>")


def markdown_html(text: str, folder: Path, title: str) -> str:
    """The markdown this module writes (headings, paragraphs, pipe tables, fenced code, image lines) as one HTML
    page with its images (paths relative to `folder`) inlined."""
    body, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines))
            body.append(f"<pre>{html.escape(chr(10).join(lines[i + 1:end]))}</pre>")
            i = end + 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not set(lines[i]) <= set("|-: "):  # the header's separator row
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head = "".join(f"<th>{inline_html(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            continue
        image = re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip())
        if image and (folder / image.group(2)).is_file():
            body.append(png_img(folder / image.group(2), image.group(1)))
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline_html(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{inline_html(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{inline_html(line)}</p>")
        i += 1
    return html_page(title, "".join(body))


def finished(table: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    if table.empty:
        return table
    done = table[table["outcome"] == "finished"]
    return done.dropna(subset=list(cfg.study.metric))


def pareto_front(table: pd.DataFrame, metrics: tuple[str, ...], modes: tuple[str, ...]) -> pd.DataFrame:
    """The rows no other row beats on every metric (ties kept)."""
    signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
    values = table[list(metrics)].to_numpy(float) * signs
    keep = [not any((values[j] >= values[i]).all() and (values[j] > values[i]).any() for j in range(len(values)))
            for i in range(len(values))]
    return table[keep]


def importances(table: pd.DataFrame, cfg: Config, space: Space) -> dict[str, dict[str, float]]:
    """Optuna's (fANOVA) importance of each searched parameter, per optimised metric; {} with < 2 finished."""
    done = finished(table, cfg)
    if len(done) < 2:
        return {}
    directions = ["maximize" if m == "max" else "minimize" for m in cfg.study.mode]
    study = optuna.create_study(directions=directions)
    for row in done.to_dict("records"):
        params = {k: row.get(f"trial.{k}") for k in space}
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in params.values()):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space,
                                                  values=[row[m] for m in cfg.study.metric]))
    out = {}
    for i, metric in enumerate(cfg.study.metric):
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=cfg.seed)
            out[metric] = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                  target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError) as e:  # e.g. no parameter varied between finished trials
            logger.info("no importances for %s: %s", metric, e)
    return out


def markdown_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_quick_curves(uri: str, table: pd.DataFrame, path: Path) -> Path:
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for row in table.itertuples(index=False):
        history = tracking.metric_history(uri, row.run_id, QUICK_METRIC)
        if history:
            steps, values = zip(*sorted(dict(history).items()), strict=True)
            ax.plot(steps, values, marker="o", ms=3, label=f"{row.label} ({row.outcome})")
    ax.set(xlabel="step", ylabel=QUICK_METRIC, title="quick probe during pre-training")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_params(table: pd.DataFrame, metric: str, params: list[str], path: Path) -> Path:
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for i, param in enumerate(params):
        ax = fig.add_subplot(rows, cols, i + 1)
        x = table[f"trial.{param}"].astype(str) if table[f"trial.{param}"].dtype == object else table[f"trial.{param}"]
        ax.scatter(x, table[metric])
        ax.set(xlabel=param, ylabel=metric)
    fig.tight_layout()
    return _save(fig, path)


def plot_pareto(table: pd.DataFrame, front: pd.DataFrame, metrics: tuple[str, ...], path: Path) -> Path:
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.scatter(table[metrics[0]], table[metrics[1]], c="lightgray", label="finished trials")
    ordered = front.sort_values(metrics[0])
    ax.plot(ordered[metrics[0]], ordered[metrics[1]], "o-", c="crimson", label="Pareto front")
    ax.set(xlabel=metrics[0], ylabel=metrics[1])
    ax.legend()
    return _save(fig, path)


def write_report(result: StudyResult, cfg: Config, space: Space | None, sections: list[tuple[str, str]]) -> Path:
    """Write report/ under the study's folder and log it, the best trial and the outcome counts to the parent
    run (the active MLflow run)."""
    check_selection(cfg.study.metric)
    out = result.study_dir / "report"
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    table, metrics, modes = result.table, cfg.study.metric, cfg.study.mode
    uri = result.tracking_uri
    table.to_csv(out / "summary.csv", index=False)
    done = finished(table, cfg)
    counts = table["outcome"].value_counts().to_dict() if not table.empty else {}
    md = [f"# Study `{cfg.study.name}`", "",
          f"{len(table)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); optimised: "
          + ", ".join(f"{m} ({d})" for m, d in zip(metrics, modes, strict=True))
          + f"; scheduler: {cfg.study.scheduler}; wall time {result.wall_s / 60:.1f} min. Trials are ranked on "
          "selection metrics only (select/*: probes scored on held-out train data); "
          + ", ".join(FINAL_METRICS) + " is the final GLUE dev score of a finished trial, never used to choose.",
          ""]
    logged: dict[str, float] = {f"trials/{k}": float(v) for k, v in counts.items()}
    if not done.empty:
        best = pareto_front(done, metrics, modes) if len(metrics) > 1 else done.head(1)
        top = best.iloc[0]
        overrides = {k.removeprefix("trial."): v.item() if isinstance(v, np.generic) else v
                     for k, v in top.items() if k.startswith("trial.") and not (isinstance(v, float) and math.isnan(v))}
        best_cfg = override_config(cfg, overrides)
        (out / "best_config.yaml").write_text(yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
        tracking.log_params({f"best.{k}": v for k, v in overrides.items()})
        tracking.set_tags({"best_trial": str(top["label"])})
        logged.update({f"best/{m}": float(top[m]) for m in metrics})
        title = "Pareto front" if len(metrics) > 1 else "Best trial"
        md += [f"## {title}", "", markdown_table(display_table(best)), "",
               f"Best config of `{top['label']}` (full file: best_config.yaml):", "", "```yaml",
               yaml.safe_dump(overrides, sort_keys=False).strip(), "```", ""]
        if len(metrics) > 1:
            plot_pareto(done, best, metrics, plots / "pareto.png")
            md += ["![Pareto front](plots/pareto.png)", ""]
    else:
        md += ["No trial finished with the optimised metric, so there is no best config.", ""]
    if space:
        found = importances(table, cfg, space)
        for metric, values in found.items():
            logged.update({f"importance/{metric}/{k}": float(v) for k, v in values.items()})
            md += [f"## Hyperparameter importances for {metric} (Optuna fANOVA)", "",
                   markdown_table(pd.DataFrame({"parameter": list(values), "importance": list(values.values())})), ""]
        if not found:
            md += ["Hyperparameter importances need at least two finished trials.", ""]
        if not done.empty:
            plot_params(done, metrics[0], list(space), plots / "metric_vs_params.png")
            md += [f"![{metrics[0]} against each searched parameter](plots/metric_vs_params.png)", ""]
    if not table.empty:
        plot_quick_curves(uri, table, plots / "quick_probe.png")
        md += ["## Trials", "", markdown_table(display_table(table)), "",
               "![quick probe during pre-training](plots/quick_probe.png)", ""]
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(markdown_html("\n".join(md), out, f"Study {cfg.study.name}"))
    tracking.log_metrics(logged)
    tracking.log_artifact(out, "report")
    logger.info("report: %s (in MLflow: %s, artifact report/report.html)", out / "report.md",
                tracking.ui_link(uri, result.parent_run_id))
    return out

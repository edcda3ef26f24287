"""The paper's claims against a study's results: report/paper_claims.{md,html,csv} and their plots.

One row per claim of studies/paper/claims.yaml: the paper's value, ours under each evaluation protocol (the
harness's and the paper's reference code's) as mean ± std over pre-training seeds with a 95% CI, the
seed-level test between the arms, and a verdict by the rule stated at the top of the report (VERDICT_RULE).
The per-seed values are read back from the study's child runs in MLflow (so a resumed study reports all of its
runs), the λ trajectories from each learned-λ run's metric history (`train/lambda`). The markdown shows its
plots as links; MLflow's artifact viewer renders the HTML, whose plots are inlined as base64 data URIs.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as sps

from eval import stats as eval_stats
from eval.suite import PROTOCOL_PREFIX
from eval.tasks import get_spec
from harness import tracking
from harness.config import REPO_ROOT
from harness.step import lr_multiplier
from harness.study_report import StudyResult, html_page, inline_html, markdown_table, param_value, png_img

logger = logging.getLogger(__name__)

CLAIMS_FILE = REPO_ROOT / "studies" / "paper" / "claims.yaml"
ARM, BASELINE, CONTROL = "hybrid", "mlm", "hybrid_fixed"  # the paper's arms and the fixed-λ control
ALPHA = 0.05
PARITY_MARGIN = 0.02  # |hybrid - mlm| of a probe score (0..1) still called "similar"
FLOPS_TOLERANCE = 0.10  # total model FLOPs within 10%: "identical compute budgets"
GAP = "semantic_lexical_gap"  # derived per seed: the task's main probe score minus lexical_acc
HOLM_ON = "welch"  # the p-value the verdicts use (eval.stats.seed_tests): see TEST_DOC
KEYS = ["task", "pooling", "family", "metric", "protocol"]
FAMILIES = ("probe", "geom", "devcv")  # of the suite's dev rows (select/* is held-out train: not a claim's number)
PAPER_CELLS = ("representation_analysis", "probe_table", "readme_uniformity_table")  # claims.yaml value groups

TEST_DOC = ("Seed-level test between two arms (`eval.stats.seed_tests`), per task x pooling x metric x protocol, on "
            "the per-seed values (one value per pre-training seed): Welch's two-sided t-test, the p-value the "
            "verdicts use, and beside it the exact permutation test over the seed labels (assumption-free, but with "
            "K seeds per arm its smallest two-sided p-value is 2 / C(2K, K): 0.1 for K = 3, 0.029 for K = 4, so at "
            "the K = 3 of the shipped spec it can never reach 0.05, let alone after Holm). Welch p-values are "
            "Holm-corrected over every test of one comparison (all cells of all claims, both protocols). "
            f"Significant: Holm-corrected Welch p < {ALPHA}. CIs are 95% t-intervals over seeds (the difference: "
            "Welch-Satterthwaite).")
VERDICT_RULE = [
    "**reproduced**: the difference hybrid - MLM has the claimed sign in every measured cell of the claim "
    "(task x pooling of its metric, per protocol) and is significant in every one; for the 5-10x claim the ratio "
    "of the seed means also lies in [5, 10] in every cell;",
    "**reversed**: the opposite sign is significant in at least one cell and the claimed sign in none;",
    "**not reproduced**: anything else (mixed signs, or too few significant cells).",
    f"Parity (similar probe scores): **reproduced** when no cell differs significantly and every |difference| is at "
    f"most {PARITY_MARGIN} (two points of accuracy); **not reproduced** otherwise.",
    "Learned λ (balances the two objectives): **not reproduced** when L_JEPA - L_MLM keeps one sign at every log "
    "step of every seed: λ's gradient λ(1-λ)(L_JEPA - L_MLM) then never changes sign, so λ only drifts toward the "
    "smaller loss, at most by Adam's step (about lr per step, the dashed Σ lr curve); **reproduced** otherwise.",
    f"Identical compute: **reproduced** when the arms' total model FLOPs agree within {FLOPS_TOLERANCE:.0%}.",
    "Absolute values depend on the model size and the training length: verdicts are on directions and ratios, "
    "and the paper's values are shown beside ours for scale only.",
]


# ---------------------------------------------------------------- per-seed values from MLflow


def parse_metric(name: str) -> tuple[str, str, str, str, str] | None:
    """'ref/geom/sst2/mean/uniformity' -> ('reference', 'geom', 'sst2', 'mean', 'uniformity'); None for others."""
    protocol = next((p for p, prefix in PROTOCOL_PREFIX.items() if prefix and name.startswith(prefix)), "harness")
    parts = name.removeprefix(PROTOCOL_PREFIX[protocol]).split("/")
    if len(parts) == 4 and parts[0] in FAMILIES:
        return protocol, *parts
    return None


def seed_values(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The tidy per-seed table (arm, seed, task, pooling, family, metric, protocol, value) of the finished child
    runs, with the derived semantic-lexical gap (family "derived") per task, pooling and protocol: the task's main
    score minus lexical_acc, the score of the dev-CV "semantic" probe where the protocol has one (the reference's
    representation_analysis.py:probe_gap), else of the GLUE probe."""
    rows = []
    for run in runs:
        if run["tags"].get("outcome") != "finished":
            continue
        arm, seed = run["tags"].get("group"), int(param_value(run["params"]["seed"]))
        for name, value in run["metrics"].items():
            parsed = parse_metric(name)
            if parsed:
                protocol, family, task, pooling, metric = parsed
                rows.append({"arm": arm, "seed": seed, "task": task, "pooling": pooling, "family": family,
                             "metric": metric, "protocol": protocol, "value": float(value)})
    tidy = pd.DataFrame(rows, columns=["arm", "seed", *KEYS, "value"])
    if tidy.empty:
        return tidy
    cell = ["arm", "seed", "task", "pooling", "protocol"]
    main = tidy[(tidy["metric"] == tidy["task"].map(lambda t: get_spec(t).metrics[0]))
                & tidy["family"].isin(["probe", "devcv"])]
    main = main.sort_values("family", key=lambda f: f != "devcv").drop_duplicates(cell)  # devcv first
    lexical = tidy[(tidy["family"] == "geom") & (tidy["metric"] == "lexical_acc")]
    gap = main.merge(lexical, on=cell, suffixes=("", "_lex"))
    gap = gap.assign(family="derived", metric=GAP, value=gap["value"] - gap["value_lex"])[tidy.columns]
    return pd.concat([tidy, gap], ignore_index=True)


# ---------------------------------------------------------------- the seed-level test


def seed_tests(tidy: pd.DataFrame, arm_a: str, arm_b: str) -> pd.DataFrame:
    """eval.stats.seed_tests between two arms (Holm over all rows on the Welch p-value), with the 95% Welch CI of
    each difference."""
    out = eval_stats.seed_tests(tidy, arm_a, arm_b, alpha=ALPHA, holm_on=HOLM_ON)
    if out.empty:
        return out
    lo, hi = zip(*(welch_ci(r) for r in out.itertuples()), strict=True)
    return out.assign(diff_ci_low=lo, diff_ci_high=hi)


def t_ci(values: np.ndarray) -> tuple[float, float]:
    """95% t-interval of the mean of per-seed values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = sps.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


def welch_ci(r: Any) -> tuple[float, float]:
    """95% Welch-Satterthwaite interval of a test row's difference of means."""
    va, vb = (r.std_a ** 2 / r.n_a, r.std_b ** 2 / r.n_b) if r.n_a > 1 and r.n_b > 1 else (math.nan, math.nan)
    se = math.sqrt(va + vb)
    if not se > 0:
        return (r.diff, r.diff) if se == 0 else (math.nan, math.nan)
    df = (va + vb) ** 2 / (va ** 2 / (r.n_a - 1) + vb ** 2 / (r.n_b - 1))
    half = sps.t.ppf(0.975, df) * se
    return r.diff - half, r.diff + half


# ---------------------------------------------------------------- the claims


@dataclass
class Check:
    """How one claim of claims.yaml is tested: its kind, metric, cells and claimed direction (+1: hybrid higher)."""

    claim: dict[str, Any]
    kind: str  # direction, ratio, parity, lambda, compute, none
    metric: str | None = None
    direction: int = 0
    tasks: tuple[str, ...] | None = None  # None: every measured task
    pooling: str | None = None  # None: every measured pooling
    cells: tuple[tuple[str, str, str], ...] = ()  # parity: (task, pooling, metric) cells
    family: str = "geom"  # of the primary metric (parity: probe)
    also: tuple[str, ...] = ()  # metrics shown beside the primary one
    bounds: tuple[float, float] | None = None  # ratio claims

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([m for _, _, m in self.cells] + ([self.metric] if self.metric else [])
                                   + list(self.also)))

    def select(self, table: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
        """The rows of `table` (tidy or tests) in this claim's scope, for one metric (default: the primary)."""
        if table.empty:
            return table
        if self.kind == "parity":
            keys = pd.MultiIndex.from_frame(table[["task", "pooling", "metric"]])
            return table[keys.isin(list(self.cells)) & (table["family"] == "probe")]
        keep = (table["metric"] == (metric or self.metric)) & (table["family"] == self.family)
        if self.tasks is not None:
            keep &= table["task"].isin(self.tasks)
        if self.pooling is not None:
            keep &= table["pooling"] == self.pooling
        return table[keep]


def load_claims(path: Path = CLAIMS_FILE) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def checks(claims: Mapping[str, Any]) -> list[Check]:
    """A Check for every claim of claims.yaml; an unknown claim id gets kind 'none' (listed, not tested)."""
    sign = {"lower_is_better": -1, "lower_is_less_lexical": -1, "higher_is_better": 1}
    out = []
    for c in claims["claims"]:
        direction = sign.get(c.get("direction", ""), 0)
        centred = ("uniformity_centered",) if c.get("metric") == "uniformity" else ()
        if c["id"] == "probe_parity":
            cells = tuple(dict.fromkeys((v["task"], v["pooling"], v["metric"]) for v in claims["values"]
                                        if v["claim"] == "probe_table"))
            out.append(Check(c, "parity", cells=cells, family="probe"))
        elif c["id"] == "uniformity_ratio":
            paper = c["paper"]
            out.append(Check(c, "ratio", c["metric"], direction, also=centred,
                             bounds=(paper["ratio_min"], paper["ratio_max"])))
        elif c["id"] == "uniformity_attention_table":
            out.append(Check(c, "direction", c["metric"], direction, tasks=tuple(c["paper"]), pooling=c["pooling"],
                             also=centred))
        elif c["id"] == "richer_spectra":
            others = tuple(m for m in c["metrics"] if m != c["primary_metric"])
            out.append(Check(c, "direction", c["primary_metric"], direction, pooling=c["pooling"], also=others))
        elif c["id"] == "semantic_lexical_balance":
            out.append(Check(c, "direction", GAP, direction, family="derived"))
        elif c["id"] in ("uniformity_headline", "less_lexical"):
            out.append(Check(c, "direction", c["metric"], direction, also=centred))
        elif c["id"] == "learned_lambda":
            out.append(Check(c, "lambda"))
        elif c["id"] == "training_setup":
            out.append(Check(c, "compute"))
        else:
            out.append(Check(c, "none"))
    return out


def paper_values(claims: Mapping[str, Any]) -> pd.DataFrame:
    """The paper's per-cell values (arm, task, pooling, metric, value on a 0..1 scale where a percent)."""
    rows = [{"arm": v["arm"], "task": v["task"], "pooling": v["pooling"], "metric": v["metric"],
             "family": "devcv" if v.get("selection") == "dev_5fold_cv" else v.get("family", "geom"),
             "paper": v["value"] / 100 if v["scale"] == "percent" else v["value"], "source_claim": v["claim"]}
            for v in claims["values"] if v["claim"] in PAPER_CELLS]
    table = pd.DataFrame(rows)
    # One value per cell: the README's own table first, then the raw analysis.
    order = {name: i for i, name in enumerate(("probe_table", "readme_uniformity_table", "representation_analysis"))}
    table = table.sort_values("source_claim", key=lambda s: s.map(order))
    return table.drop_duplicates(["arm", "task", "pooling", "family", "metric"])


def direction_verdict(tests: pd.DataFrame, direction: int, bounds: tuple[float, float] | None = None) -> str:
    if tests.empty:
        return "not measured"
    if tests["p_welch"].isna().all():
        return "not tested (fewer than two seeds per arm)"
    signed = np.sign(tests["diff"].to_numpy(float)) * direction
    significant = tests["significant"].to_numpy(bool)
    in_bounds = True
    if bounds is not None:
        ratio = tests["mean_a"].to_numpy(float) / tests["mean_b"].to_numpy(float)
        in_bounds = bool(((ratio >= bounds[0]) & (ratio <= bounds[1])).all())
    if (signed > 0).all() and significant.all() and in_bounds:
        return "reproduced"
    if (significant & (signed < 0)).any() and not (significant & (signed > 0)).any():
        return "reversed"
    return "not reproduced"


def parity_verdict(tests: pd.DataFrame) -> str:
    if tests.empty:
        return "not measured"
    if tests["p_welch"].isna().all():
        return "not tested (fewer than two seeds per arm)"
    similar = (tests["diff"].abs() <= PARITY_MARGIN).all() and not tests["significant"].any()
    return "reproduced" if similar else "not reproduced"


def pm(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.4g} ± {std:.2g}" if not math.isnan(std) else f"{mean:.4g}"


def ci(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{low:.4g}, {high:.4g}]"


def summarise(check: Check, tidy: pd.DataFrame, tests: pd.DataFrame, protocol: str) -> dict[str, Any]:
    """One protocol's part of a claim's row: the per-seed average over the claim's cells for each arm (mean, std,
    95% CI over seeds), its test summary over the cells, and the verdict."""
    scope = check.select(tests[tests["protocol"] == protocol]) if not tests.empty else tests
    values = check.select(tidy[tidy["protocol"] == protocol]) if not tidy.empty else tidy
    out: dict[str, Any] = {"cells": len(scope)}
    for arm in (ARM, BASELINE):
        per_seed = values[values["arm"] == arm].groupby("seed")["value"].mean().to_numpy(float)
        mean, std = (per_seed.mean(), per_seed.std(ddof=1) if len(per_seed) > 1 else math.nan) if len(per_seed) \
            else (math.nan, math.nan)
        low, high = t_ci(per_seed)
        out.update({f"{arm}_mean": mean, f"{arm}_std": std, f"{arm}_ci_low": low, f"{arm}_ci_high": high})
    if scope.empty:
        out.update(claimed_direction=0, significant=0, significant_opposite=0, verdict="not measured")
        return out
    if check.kind == "parity":
        out.update(max_abs_diff=float(scope["diff"].abs().max()), significant=int(scope["significant"].sum()),
                   verdict=parity_verdict(scope))
        return out
    signed = np.sign(scope["diff"].to_numpy(float)) * check.direction
    significant = scope["significant"].to_numpy(bool)
    out.update(claimed_direction=int((signed > 0).sum()), significant=int((significant & (signed > 0)).sum()),
               significant_opposite=int((significant & (signed < 0)).sum()),
               verdict=direction_verdict(scope, check.direction, check.bounds))
    if check.bounds is not None:
        ratio = scope["mean_a"] / scope["mean_b"]
        out.update(ratio_min=float(ratio.min()), ratio_max=float(ratio.max()))
    for metric in check.also:
        also = check.select(tests[tests["protocol"] == protocol], metric)
        out[f"verdict_{metric}"] = direction_verdict(also, check.direction, check.bounds)
    return out


# ---------------------------------------------------------------- λ


@dataclass
class LambdaRun:
    label: str
    arm: str
    seed: int
    w0: float  # logit of the initial λ
    steps: np.ndarray
    lam: np.ndarray
    drift: np.ndarray  # sigmoid(logit(λ0) + Σ lr): λ moved by Adam's full step in one direction all along
    loss_gap: np.ndarray  # L_JEPA - L_MLM at the same log steps


def lambda_runs(uri: str, runs: Sequence[Mapping[str, Any]]) -> list[LambdaRun]:
    """The learned-λ runs' trajectories (`train/lambda` history) and the one-direction drift they are compared to."""
    out = []
    for run in runs:
        p = {k: param_value(v) for k, v in run["params"].items()}
        if run["tags"].get("outcome") != "finished" or p.get("objective.weighting") != "learned" \
                or p.get("objective.name") != "hybrid":
            continue
        history = dict(tracking.metric_history(uri, run["run_id"], "train/lambda"))
        jepa = dict(tracking.metric_history(uri, run["run_id"], "train/loss_jepa"))
        mlm = dict(tracking.metric_history(uri, run["run_id"], "train/loss_mlm"))
        steps = np.array(sorted(history), dtype=int)
        if not len(steps):
            continue
        lr = float(p["optim.lr"]) * np.array([lr_multiplier(s, int(p["optim.warmup_steps"]), int(p["optim.max_steps"]),
                                                            float(p["optim.min_lr_ratio"]))
                                              for s in range(int(steps.max()))])
        w0 = math.log(float(p["objective.lambda_init"]) / (1 - float(p["objective.lambda_init"])))
        drift = 1 / (1 + np.exp(-(w0 + np.concatenate([[0.0], np.cumsum(lr)])[steps - 1])))
        gap = np.array([jepa.get(s, math.nan) - mlm.get(s, math.nan) for s in steps])
        out.append(LambdaRun(run["tags"].get("label", run["run_id"]), run["tags"].get("group"),
                             int(p["seed"]), w0, steps, np.array([history[s] for s in steps]), drift, gap))
    return sorted(out, key=lambda r: (r.arm, r.seed))


def lambda_summary(runs: list[LambdaRun]) -> dict[str, Any]:
    if not runs:
        return {"verdict": "not measured", "note": "no finished learned-λ run"}
    gaps = np.concatenate([r.loss_gap[~np.isnan(r.loss_gap)] for r in runs])
    one_sign = len(gaps) > 0 and (bool((gaps < 0).all()) or bool((gaps > 0).all()))
    final = np.array([r.lam[-1] for r in runs])
    moved = np.array([_logit(r.lam[-1]) - r.w0 for r in runs])
    budget = np.array([_logit(r.drift[-1]) - r.w0 for r in runs])  # Σ lr up to the last log step
    share = float(np.mean(moved / budget)) if np.all(budget > 0) else math.nan
    note = (f"final λ {pm(final.mean(), final.std(ddof=1) if len(final) > 1 else math.nan)}; L_JEPA - L_MLM "
            f"{'< 0' if (gaps < 0).all() else '> 0' if (gaps > 0).all() else 'changes sign'} at every log step; "
            f"λ's logit moved {share:.0%} of Σ lr (the most Adam moves it in one direction)")
    return {"verdict": "not reproduced" if one_sign else "reproduced", "note": note, "final_lambda": final.mean(),
            "drift_share": share}


def _logit(x: float) -> float:
    return math.log(x / (1 - x))


def lambda_table(runs: list[LambdaRun], rows: int = 12) -> pd.DataFrame:
    """λ per seed at ~`rows` log steps (all in lambda_trajectories.csv), with the drift curve."""
    full = lambda_frame(runs)
    if full.empty:
        return full
    steps = np.unique(full["step"])
    shown = steps[np.unique(np.linspace(0, len(steps) - 1, min(rows, len(steps))).round().astype(int))]
    wide = full[full["step"].isin(shown)].pivot_table(index="step", columns="label", values="lambda")
    drift = full[full["step"].isin(shown)].groupby("step")["drift"].mean()
    return wide.assign(mean=wide.mean(axis=1), **{"drift (Σ lr)": drift}).reset_index()


def lambda_frame(runs: list[LambdaRun]) -> pd.DataFrame:
    return pd.DataFrame([{"label": r.label, "arm": r.arm, "seed": r.seed, "step": int(s), "lambda": lam, "drift": d,
                          "loss_jepa_minus_mlm": g}
                         for r in runs for s, lam, d, g in zip(r.steps, r.lam, r.drift, r.loss_gap, strict=True)])


# ---------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_lambda(runs: list[LambdaRun], path: Path) -> Path:
    fig = Figure(figsize=(11, 3.8))
    ax, gap_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for r in runs:
        line, = ax.plot(r.steps, r.lam, label=f"{r.label}")
        ax.plot(r.steps, r.drift, ls="--", c=line.get_color(), alpha=0.6)
        gap_ax.plot(r.steps, r.loss_gap, c=line.get_color(), label=r.label)
    ax.set(xlabel="step", ylabel="λ", title="learned λ (dashed: one-direction drift by Σ lr)")
    gap_ax.axhline(0, c="gray", lw=0.8)
    gap_ax.set(xlabel="step", ylabel="L_JEPA - L_MLM", title="sign of λ's gradient")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_cells(tidy: pd.DataFrame, metrics: Sequence[str], path: Path, title: str, pooling: str | None = None,
               arms: Sequence[str] = (ARM, CONTROL, BASELINE)) -> Path | None:
    """Seed values (dots) and mean ± std per arm, per task x pooling cell; rows: protocols, columns: metrics."""
    data = tidy[tidy["metric"].isin(metrics) & tidy["arm"].isin(arms)]
    if pooling is not None:
        data = data[data["pooling"] == pooling]
    if data.empty:
        return None
    protocols = [p for p in PROTOCOL_PREFIX if p in set(data["protocol"])]
    n_cells = data.groupby(["task", "pooling"]).ngroups
    fig = Figure(figsize=(max(5.5, 0.32 * n_cells) * len(metrics), 3.6 * len(protocols)))
    present = [a for a in arms if a in set(data["arm"])]
    for i, protocol in enumerate(protocols):
        for j, metric in enumerate(metrics):
            ax = fig.add_subplot(len(protocols), len(metrics), i * len(metrics) + j + 1)
            cell = data[(data["protocol"] == protocol) & (data["metric"] == metric)]
            labels = sorted({(t, p) for t, p in zip(cell["task"], cell["pooling"], strict=True)})
            for k, arm in enumerate(present):
                x0 = np.arange(len(labels)) + (k - (len(present) - 1) / 2) * 0.22
                for x, (task, pool) in zip(x0, labels, strict=True):
                    v = cell[(cell["arm"] == arm) & (cell["task"] == task) & (cell["pooling"] == pool)]["value"]
                    ax.scatter([x] * len(v), v, s=8, alpha=0.5, color=f"C{k}")
                    ax.errorbar([x], [v.mean()], yerr=[v.std(ddof=1) if len(v) > 1 else 0], fmt="o", color=f"C{k}",
                                ms=4, capsize=2, label=arm if x == x0[0] else None)
            ax.set_xticks(range(len(labels)), [f"{t}/{p}" for t, p in labels], fontsize=7, rotation=90)
            ax.set_title(f"{metric} ({protocol})", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- the document: markdown and self-contained HTML


@dataclass
class Doc:
    """Blocks written both as markdown (plots as links) and as one HTML file (plots inlined as data URIs)."""

    folder: Path
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, value: Any) -> None:
        self.blocks.append((kind, value))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out += ["#" * value[0] + " " + value[1], ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "list":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                out += [markdown_table(value), ""]
            elif kind == "image":
                out += [f"![{value[1]}]({value[0].relative_to(self.folder).as_posix()})", ""]
        return "\n".join(out)

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{inline_html(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{inline_html(value)}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in value.columns)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                               for row in value.itertuples(index=False))
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "image":
                body.append(png_img(value[0], value[1]))
        return html_page(title, "".join(body))


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- the report


def claims_report(result: StudyResult, study_name: str, spec: Mapping[str, Any], budgets: pd.DataFrame,
                  claims_file: Path = CLAIMS_FILE) -> list[tuple[str, str]]:
    """Write report/paper_claims.{md,html,csv} (+ cells, tests, λ tables and plots) for a paper_claims study;
    returns the sections for the study's report.md. The caller logs report/ to the parent run."""
    claims = load_claims(claims_file)
    out = result.study_dir / "report"
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    runs = tracking.child_runs(result.tracking_uri, result.parent_run_id)
    tidy = seed_values(runs)
    todo = checks(claims)
    in_scope = pd.concat([c.select(tidy, m) for c in todo if c.kind in ("direction", "ratio", "parity")
                          for m in (c.metrics if c.kind != "parity" else [None])], ignore_index=True) \
        if not tidy.empty else tidy
    in_scope = in_scope.drop_duplicates(["arm", "seed", *KEYS]) if not in_scope.empty else in_scope
    tests = seed_tests(in_scope, ARM, BASELINE) if not in_scope.empty else pd.DataFrame()
    control = seed_tests(in_scope, ARM, CONTROL) if not in_scope.empty else pd.DataFrame()
    paper = paper_values(claims)
    lam_runs = lambda_runs(result.tracking_uri, runs)
    # The reference protocol first: it measures as the paper did; the harness's protocol is ours.
    protocols = [p for p in ("reference", "harness") if not tidy.empty and p in set(tidy["protocol"])] or ["harness"]
    seeds = tidy.groupby("arm")["seed"].nunique().to_dict() if not tidy.empty else {}

    rows = []
    for check in todo:
        c = check.claim
        row: dict[str, Any] = {"claim": c["id"], "statement": c["text"], "paper": _paper_text(c), "kind": check.kind,
                               "metric": check.metric or ", ".join(f"{t}/{p}/{m}" for t, p, m in check.cells),
                               "test": "Welch t (Holm)" if check.kind in ("direction", "ratio", "parity") else ""}
        if check.kind in ("direction", "ratio", "parity"):
            row.update(_paper_means(check, paper))
            for protocol in protocols:
                part = summarise(check, in_scope, tests, protocol)
                row.update({f"{protocol}_{k}": v for k, v in part.items()})
        elif check.kind == "lambda":
            row.update(lambda_summary(lam_runs))
        elif check.kind == "compute":
            row.update(_compute_summary(budgets, spec))
        else:
            row.update(verdict="not checked", note="no test defined for this claim")
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / "paper_claims.csv", index=False)
    cells = _cells_table(tests, paper)
    cells.to_csv(out / "paper_claims_cells.csv", index=False)
    control.to_csv(out / "paper_claims_control.csv", index=False)
    lambda_frame(lam_runs).to_csv(out / "lambda_trajectories.csv", index=False)
    in_scope.to_csv(out / "paper_claims_seed_values.csv", index=False)

    doc = _document(out, study_name, spec, budgets, seeds, protocols, todo, table, cells, control, tidy, lam_runs,
                    len(tests))
    (out / "paper_claims.md").write_text(doc.markdown())
    (out / "paper_claims.html").write_text(doc.html(f"paper claims: {study_name}"))
    logger.info("claims report: %s", out / "paper_claims.html")
    summary = _summary_table(table, protocols)
    return [("The paper's claims", "Full report: paper_claims.html (renders with its plots in MLflow's artifact "
                                  "viewer), paper_claims.md, paper_claims.csv.\n\n" + markdown_table(summary))]


def _paper_text(claim: Mapping[str, Any]) -> str:
    paper = claim.get("paper")
    if not paper:
        return "(no number)"
    return "; ".join(f"{k}: {v}" for k, v in paper.items())


def _compute_summary(budgets: pd.DataFrame, spec: Mapping[str, Any]) -> dict[str, Any]:
    total = dict(zip(budgets["arm"], budgets["total PFLOP"], strict=True)) if not budgets.empty else {}
    if ARM not in total or BASELINE not in total:
        return {"verdict": "not measured", "note": "needs the hybrid and mlm arms"}
    ratio = total[ARM] / total[BASELINE]
    verdict = "reproduced" if abs(ratio - 1) <= FLOPS_TOLERANCE else "not reproduced"
    return {"verdict": verdict, "flops_ratio": ratio,
            "note": f"match: {spec.get('match')}; hybrid / MLM total model FLOPs = {ratio:.2f}"}


def _cells_table(tests: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    if tests.empty:
        return tests
    index = ["task", "pooling", "family", "metric"]
    wide = paper.pivot_table(index=index, columns="arm", values="paper", aggfunc="first")
    wide = wide.rename(columns={a: f"paper_{a}" for a in wide.columns}).reset_index()
    return tests.merge(wide, on=index, how="left")


def _paper_means(check: Check, paper: pd.DataFrame) -> dict[str, float]:
    """The paper's values averaged over the claim's cells (those it published), per arm."""
    cells = pd.concat([check.select(paper, m) for m in (check.metrics[:1] if check.kind != "parity" else [None])])
    return {f"paper_{arm}_mean": float(cells.loc[cells["arm"] == arm, "paper"].mean()) if len(cells) else math.nan
            for arm in (ARM, BASELINE)}


def _ours(r: Mapping[str, Any], protocol: str, arm: str) -> str:
    p = f"{protocol}_{arm}"
    return f"{pm(r[f'{p}_mean'], r[f'{p}_std'])} {ci(r[f'{p}_ci_low'], r[f'{p}_ci_high'])}".strip()


def _summary_table(table: pd.DataFrame, protocols: Sequence[str]) -> pd.DataFrame:
    """One row per claim: the paper's value; per protocol ours (hybrid and MLM: mean ± std over seeds of the
    average over the claim's cells, [95% CI]), the cells' support and the verdict."""
    rows = []
    for r in table.to_dict("records"):
        paper = r["paper"]
        if not _isnan(r.get("paper_hybrid_mean", math.nan)):
            paper += f" (over these cells: {r['paper_hybrid_mean']:.4g} vs {r['paper_mlm_mean']:.4g})"
        row = {"claim": r["claim"], "paper": paper}
        for protocol in protocols:
            verdict = r.get(f"{protocol}_verdict")
            if not isinstance(verdict, str):  # a claim that does not depend on the protocol
                first = protocol == protocols[0]
                row.update({f"{protocol}: hybrid vs MLM": "", f"{protocol}: cells": r.get("note", "") if first else
                            "(as above: not an evaluation)", f"{protocol}: verdict": r.get("verdict", "")})
                continue
            cells, significant = int(r[f"{protocol}_cells"]), int(r[f"{protocol}_significant"])
            if verdict == "not measured":
                support = "no cell measured"
            elif r["kind"] == "parity":
                support = f"max abs diff {r[f'{protocol}_max_abs_diff']:.3g}; {significant}/{cells} significant"
            else:
                support = (f"{int(r[f'{protocol}_claimed_direction'])}/{cells} in the claimed direction, "
                           f"{significant} significant; {int(r[f'{protocol}_significant_opposite'])} significant "
                           "the other way")
            if not _isnan(r.get(f"{protocol}_ratio_min", math.nan)):
                support += f"; ratio {r[f'{protocol}_ratio_min']:.2f}-{r[f'{protocol}_ratio_max']:.2f}"
            if isinstance(r.get(f"{protocol}_verdict_uniformity_centered"), str):
                support += f"; uniformity_centered: {r[f'{protocol}_verdict_uniformity_centered']}"
            row.update({f"{protocol}: hybrid vs MLM": f"{_ours(r, protocol, ARM)} vs {_ours(r, protocol, BASELINE)}",
                        f"{protocol}: cells": support, f"{protocol}: verdict": verdict})
        rows.append(row)
    return pd.DataFrame(rows)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _document(out: Path, study_name: str, spec: Mapping[str, Any], budgets: pd.DataFrame, seeds: Mapping[str, int],
              protocols: Sequence[str], todo: list[Check], table: pd.DataFrame, cells: pd.DataFrame,
              control: pd.DataFrame, tidy: pd.DataFrame, lam_runs: list[LambdaRun], n_tests: int) -> Doc:
    plots = out / "plots"
    doc = Doc(out)
    doc.add("h", (1, f"The paper's claims, tested: study `{study_name}`"))
    doc.add("p", f"Arms (finished seeds): {', '.join(f'`{a}` ({n})' for a, n in seeds.items()) or 'none'}; "
                 f"match: {spec.get('match')}; evaluation protocols: {', '.join(protocols)} (`harness`: this suite, "
                 "probe hyper-parameters chosen on held-out train data; `reference`: the paper's code's protocol, "
                 "studies/paper/REFERENCE.md). Paper: studies/paper/claims.yaml.")
    doc.add("p", f"**Test.** {TEST_DOC} This report ran {n_tests} hybrid-vs-MLM tests.")
    doc.add("p", "**Verdict rule** (per claim and protocol):")
    doc.add("list", VERDICT_RULE)
    doc.add("h", (2, "Claims"))
    doc.add("table", _summary_table(table, protocols))
    if not budgets.empty:
        doc.add("p", "Training budget per arm:")
        doc.add("table", budgets)
    shown = ["task", "pooling", "metric", "protocol", "hybrid", "mlm", "diff [95% CI]", "p Welch", "p perm", "p Holm"]
    for check in todo:
        c = check.claim
        doc.add("h", (3, f"{c['id']}: {c['text']}"))
        doc.add("p", f"Paper: {_paper_text(c)} ({c.get('source', '')}).")
        if c.get("raw_check"):
            doc.add("p", f"What the paper's raw outputs show: {c['raw_check']}")
        if check.kind in ("direction", "ratio", "parity") and not cells.empty:
            doc.add("table", _claim_cells(check, cells))
        elif check.kind == "lambda":
            row = table[table["claim"] == c["id"]].iloc[0]
            doc.add("p", f"Verdict: **{row['verdict']}**. {row.get('note', '')}.")
        elif check.kind == "compute":
            row = table[table["claim"] == c["id"]].iloc[0]
            doc.add("p", f"Verdict: **{row['verdict']}**. {row.get('note', '')}.")
    doc.add("h", (2, "λ trajectories of the learned-λ arm"))
    if lam_runs:
        doc.add("image", (plot_lambda(lam_runs, plots / "claims_lambda.png"), "learned lambda"))
        doc.add("table", lambda_table(lam_runs))
        doc.add("p", "Every log step of every run: lambda_trajectories.csv.")
    else:
        doc.add("p", "No finished learned-λ run.")
    doc.add("h", (2, "Control: learned λ vs λ fixed at 0.5"))
    if not control.empty:
        sig = control[control["significant"]]
        doc.add("p", f"{len(control)} seed-level tests `{ARM}` vs `{CONTROL}` on the claims' cells (Holm over these), "
                     f"{len(sig)} significant: does learning λ change the encoder? All: paper_claims_control.csv.")
        if not sig.empty:
            doc.add("table", _format_cells(sig)[shown].rename(columns={"mlm": CONTROL}))
    else:
        doc.add("p", f"No `{CONTROL}` arm in this study.")
    doc.add("h", (2, "Key comparisons"))
    for metrics, name, title, pooling in ((("uniformity", "uniformity_centered"), "claims_uniformity.png",
                                           "uniformity (lower: more uniform) and its centred form", None),
                                          (("effective_rank", "spectral_entropy", "stable_rank"), "claims_spectra.png",
                                           "spectra under max pooling", "max"),
                                          (("lexical_acc", GAP), "claims_lexical.png",
                                           "lexical probe and the semantic-lexical gap", None),
                                          (("acc", "f1", "spearman"), "claims_probes.png", "probe scores (dev)", None)):
        path = plot_cells(tidy, metrics, plots / name, title, pooling) if not tidy.empty else None
        if path is not None:
            doc.add("image", (path, title))
    return doc


def _format_cells(part: pd.DataFrame) -> pd.DataFrame:
    def fmt(v: Any) -> str:
        return "" if _isnan(v) or v is None else f"{v:.4g}"

    return part.assign(
        hybrid=[pm(m, s) for m, s in zip(part["mean_a"], part["std_a"], strict=True)],
        mlm=[pm(m, s) for m, s in zip(part["mean_b"], part["std_b"], strict=True)],
        **{"diff [95% CI]": [f"{d:.3g} {ci(lo, hi)}" for d, lo, hi in
                             zip(part["diff"], part["diff_ci_low"], part["diff_ci_high"], strict=True)],
           "p Welch": part["p_welch"].map(fmt), "p perm": part["p_permutation"].map(fmt),
           "p Holm": part["p_holm"].map(fmt),
           "paper_hybrid": part.get("paper_hybrid", pd.Series(math.nan, index=part.index)).map(fmt),
           "paper_mlm": part.get("paper_mlm", pd.Series(math.nan, index=part.index)).map(fmt)})


def _claim_cells(check: Check, cells: pd.DataFrame) -> pd.DataFrame:
    """A claim's cells, the reference protocol first: the paper's values and ours per arm, the difference and its
    tests; other metrics of the claim (uniformity_centered beside uniformity) as columns beside; ratio claims add
    the ratio of the seed means."""
    order = {"reference": 0, "harness": 1}
    index = ["protocol", "task", "pooling"]
    main = _format_cells(check.select(cells))
    columns = ["paper_hybrid", "paper_mlm", "hybrid", "mlm", "diff [95% CI]", "p Welch", "p perm", "p Holm"]
    if check.kind == "parity":
        index = [*index, "metric"]
    table = main[index + columns].copy()
    if check.bounds is not None:
        paper_ratio = pd.to_numeric(main["paper_hybrid"], errors="coerce") / pd.to_numeric(main["paper_mlm"],
                                                                                          errors="coerce")
        table["paper ratio"] = paper_ratio.map(lambda v: "" if math.isnan(v) else f"{v:.2f}")
        table["ratio"] = (main["mean_a"] / main["mean_b"]).map(lambda v: f"{v:.2f}")
    for metric in check.also:
        other = _format_cells(check.select(cells, metric))
        if other.empty:
            continue
        other = other[index + ["hybrid", "mlm", "diff [95% CI]", "p Holm"]]
        table = table.merge(other.rename(columns={c: f"{metric}: {c}" for c in other.columns if c not in index}),
                            on=index, how="left")
    table = table.sort_values(index, key=lambda s: s.map(order) if s.name == "protocol" else s)
    return table.fillna("").reset_index(drop=True)

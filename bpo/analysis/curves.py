"""Training curves of preference runs: the Bootstrapped-PO paper's Figure 6, for any number of runs.

Pi et al. (ECCV 2024, arXiv 2403.08730, Fig. 6) show that during BPO the log-probability of the
rejected answers falls steadily while that of the chosen answers stays roughly flat, whereas SFT
keeps raising the chosen log-probability. This module reads the ``metrics.jsonl`` that ``bpo train``
writes (one row per logged optimizer step, see :mod:`bpo.train.metrics`), bins each metric into
windows of optimizer steps, and plots the window mean with a +-1 std band, runs overlaid.

Windows (:func:`window_stats`) are fixed ranges of the *optimizer step number*: window ``k`` holds
steps ``k*w + 1 .. (k+1)*w`` (steps count from 1). Binning by step rather than by logged row keeps
windows aligned across runs logged at different ``run.log_every``. Within a window, ``mean`` and
``std`` are over the logged values present (a per-source key is absent from steps whose batches
held no negative of that source; ``null`` = non-finite is skipped too); ``std`` is the population
std (ddof = 0), so a window with one value has std 0. The last window may be partial. The x
position of a window is the midpoint of the first and last step that contributed a value.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bpo.analysis.plotting import color, linestyle, new_figure, save_figure, unique_labels, write_csv
from bpo.errors import BpoError
from bpo.eval.report import format_table
from bpo.io import read_text as _read_text  # one-line errors naming the file
from bpo.io import write_json
from bpo.train.metrics import read_metrics

# Bookkeeping columns of metrics.jsonl that are not curves.
NOT_CURVES = frozenset({"step", "epoch", "samples_per_s", "pairs_per_s", "s_per_step"})
_SOURCE_RE = re.compile(r"^(?:logps/rejected|rewards/rejected|rewards/margins|rewards/accuracies)/(.+)$")
SUMMARY_METRICS = ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies")
CSV_COLUMNS = ("run", "metric", "window", "step_first", "step_last", "step", "n", "mean", "std")


@dataclass
class Run:
    """One training run: its label, folder and logged rows (``loss_type`` from its config.yaml)."""

    label: str
    path: Path
    rows: list[dict]
    loss_type: str | None = None

    def metrics(self) -> list[str]:
        keys: dict[str, None] = {}
        for row in self.rows:
            for k, v in row.items():
                if k not in NOT_CURVES and _is_number(v):
                    keys[k] = None
        return list(keys)

    def points(self, metric: str) -> list[tuple[int, float]]:
        """``(step, value)`` for every logged row holding a finite number for ``metric``."""
        return [(int(r["step"]), float(r[metric])) for r in self.rows
                if _is_number(r.get(metric)) and math.isfinite(r[metric])]


@dataclass
class WindowStat:
    window: int
    step_first: int
    step_last: int
    n: int
    mean: float
    std: float

    @property
    def step(self) -> float:
        return (self.step_first + self.step_last) / 2


@dataclass
class Panel:
    title: str
    metrics: list[str]
    ylabel: str


@dataclass
class Group:
    """One PNG: a name (file stem), a figure title and its panels."""

    name: str
    title: str
    panels: list[Panel] = field(default_factory=list)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- loading ---------------------------------------------------------------------------------------
def load_run(path: str | os.PathLike, label: str) -> Run:
    """A run folder (``bpo train``'s ``run.output_dir``) or a ``metrics.jsonl`` file directly."""
    path = Path(path)
    metrics_file = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics_file.is_file():
        raise BpoError(f"{path}: no metrics.jsonl; pass the output_dir of a `bpo train` run "
                       "(run.output_dir) or a metrics.jsonl file")
    rows = [r for r in read_metrics(metrics_file) if isinstance(r, dict)]
    for i, row in enumerate(rows, 1):
        if not _is_number(row.get("step")):
            row["step"] = i  # hand-made files without a step column: the row order is the step
    if not rows:
        raise BpoError(f"{metrics_file}: no metric rows; the run has not logged a step yet")
    run_dir = metrics_file.parent
    return Run(label=label, path=run_dir, rows=rows, loss_type=_loss_type(run_dir))


def _loss_type(run_dir: Path) -> str | None:
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(_read_text(cfg)) or {}
    except yaml.YAMLError:
        return None
    loss = data.get("loss") if isinstance(data, dict) else None
    return loss.get("type") if isinstance(loss, dict) else None


# ---- windowed statistics ----------------------------------------------------------------------------
def window_stats(points: list[tuple[int, float]], window: int) -> list[WindowStat]:
    """Mean and population std of the values in each window of ``window`` optimizer steps.

    Window ``k`` = steps ``k*window + 1 .. (k+1)*window``; empty windows are left out.
    """
    if window < 1:
        raise BpoError(f"--window must be >= 1, not {window}")
    bins: dict[int, list[tuple[int, float]]] = {}
    for step, value in points:
        bins.setdefault((max(step, 1) - 1) // window, []).append((step, value))
    out = []
    for k in sorted(bins):
        steps = [s for s, _ in bins[k]]
        vals = [v for _, v in bins[k]]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        out.append(WindowStat(k, min(steps), max(steps), len(vals), mean, std))
    return out


def windowed(runs: list[Run], window: int) -> dict[tuple[str, str], list[WindowStat]]:
    """``{(run label, metric): [WindowStat ...]}`` for every metric of every run."""
    return {(run.label, m): window_stats(run.points(m), window) for run in runs for m in run.metrics()}


def csv_rows(series: dict[tuple[str, str], list[WindowStat]], metrics: set[str] | None = None) -> list[dict]:
    rows = []
    for (label, metric), stats in series.items():
        if metrics is not None and metric not in metrics:
            continue
        rows += [{"run": label, "metric": metric, "window": s.window, "step_first": s.step_first,
                  "step_last": s.step_last, "step": s.step, "n": s.n, "mean": s.mean, "std": s.std}
                 for s in stats]
    return rows


# ---- panel groups ------------------------------------------------------------------------------------
def sources(runs: list[Run]) -> list[str]:
    """Negative sources seen in any run (``logps/rejected/<source>`` and friends), sorted."""
    found = {m.group(1) for run in runs for k in run.metrics() if (m := _SOURCE_RE.match(k))}
    return sorted(found)


def panel_groups(srcs: list[str]) -> list[Group]:
    """The figures: log-probs, rewards, margins, accuracies (overall and per source) and loss."""
    lp = "summed log-prob of the response"
    rw = "implicit reward  beta * log(pi / pi_ref)"
    logps = Group("logps", "Log-probability of chosen and rejected responses",
                  [Panel("all negatives", ["logps/chosen", "logps/rejected"], lp)]
                  + [Panel(f"negatives: {s}", ["logps/chosen", f"logps/rejected/{s}"], lp) for s in srcs])
    rewards = Group("rewards", "Implicit rewards of chosen and rejected responses",
                    [Panel("all negatives", ["rewards/chosen", "rewards/rejected"], rw)]
                    + [Panel(f"negatives: {s}", ["rewards/chosen", f"rewards/rejected/{s}"], rw) for s in srcs])
    margins = Group("margins", "Reward margin (chosen - rejected) per negative source",
                    [Panel("reward margin", ["rewards/margins"] + [f"rewards/margins/{s}" for s in srcs],
                           "reward margin")])
    acc = Group("accuracies", "Reward accuracy (share of pairs with chosen reward > rejected) per source",
                [Panel("reward accuracy", ["rewards/accuracies"] + [f"rewards/accuracies/{s}" for s in srcs],
                       "reward accuracy")])
    loss = Group("loss", "Training loss", [Panel("loss", ["loss"], "loss"),
                                           Panel("chosen NLL per token", ["nll/chosen"], "NLL per token")])
    return [logps, rewards, margins, acc, loss]


def plot_group(group: Group, series: dict[tuple[str, str], list[WindowStat]], run_labels: list[str],
               window: int):
    """Draw one group; returns the ``Figure`` (or ``None`` when no run logged any of its metrics).

    Colour = run; line style = metric within a panel (chosen solid, rejected dashed). The band is
    mean +- std of the window. Panels with no data are dropped.
    """
    panels = [p for p in group.panels if any(series.get((lab, m)) for lab in run_labels for m in p.metrics)]
    if not panels:
        return None
    fig, axes = new_figure(len(panels))
    for ax, panel in zip(axes, panels):
        for r, label in enumerate(run_labels):
            for j, metric in enumerate(panel.metrics):
                stats = series.get((label, metric))
                if not stats:
                    continue
                x = [s.step for s in stats]
                mean = [s.mean for s in stats]
                ax.plot(x, mean, color=color(r), linestyle=linestyle(j), marker="." if len(x) < 30 else None,
                        label=f"{label}: {metric}")
                ax.fill_between(x, [s.mean - s.std for s in stats], [s.mean + s.std for s in stats],
                                color=color(r), alpha=0.18, linewidth=0)
        ax.set_title(panel.title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{group.title} (mean ± std over windows of {window} steps)")
    return fig


def group_metrics(group: Group) -> set[str]:
    return {m for p in group.panels for m in p.metrics}


# ---- summary -----------------------------------------------------------------------------------------
def summarize(runs: list[Run], series: dict[tuple[str, str], list[WindowStat]]) -> list[dict]:
    """Per run and metric: mean of the first and the last window and the change (last - first).

    Covers ``logps/chosen``, ``logps/rejected`` (and per source), margins and accuracies: "rejected
    falls while chosen stays flat, unlike SFT" reads directly off the ``change`` column.
    """
    out = []
    for run in runs:
        metrics = [m for m in SUMMARY_METRICS if (run.label, m) in series]
        metrics += sorted(m for m in run.metrics() if m.startswith("logps/rejected/"))
        for m in metrics:
            stats = series.get((run.label, m))
            if not stats:
                continue
            first, last = stats[0], stats[-1]
            out.append({"run": run.label, "metric": m, "first_window_step": first.step, "first": first.mean,
                        "last_window_step": last.step, "last": last.mean, "change": last.mean - first.mean})
    return out


def summary_text(rows: list[dict], runs: list[Run]) -> str:
    kinds = {r.label: r.loss_type or "?" for r in runs}
    table = format_table(["run (loss)", "metric", "first window", "last window", "change"],
                         [[f"{r['run']} ({kinds.get(r['run'], '?')})", r["metric"], r["first"], r["last"],
                           f"{r['change']:+.4f}"] for r in rows])
    return table


# ---- the whole command ---------------------------------------------------------------------------------
def analyze_curves(paths: list[str], out_dir: str | os.PathLike, *, window: int = 10,
                   labels: list[str] | None = None) -> dict:
    """Load runs, write ``curves.csv``, one PNG + CSV per panel group and ``summary.json``.

    Returns ``{"runs", "files", "summary", "figures"}`` (figures by group name, for tests).
    """
    if not paths:
        raise BpoError("give at least one run folder")
    labels = labels or unique_labels(paths)
    runs = [load_run(p, lab) for p, lab in zip(paths, labels)]
    series = windowed(runs, window)
    out = Path(out_dir)
    files = [write_csv(out / "curves.csv", csv_rows(series), CSV_COLUMNS)]
    figures = {}
    run_labels = [r.label for r in runs]
    for group in panel_groups(sources(runs)):
        fig = plot_group(group, series, run_labels, window)
        if fig is None:
            continue
        figures[group.name] = fig
        files.append(save_figure(fig, out / f"{group.name}.png"))
        files.append(write_csv(out / f"{group.name}.csv", csv_rows(series, group_metrics(group)), CSV_COLUMNS))
    summary = summarize(runs, series)
    write_json(out / "summary.json", {"window": window, "runs": {r.label: {"path": str(r.path),
                                                                             "loss_type": r.loss_type,
                                                                             "logged_steps": len(r.rows)}
                                                                  for r in runs},
                                      "changes": summary})
    files.append(out / "summary.json")
    return {"runs": runs, "files": files, "summary": summary, "figures": figures}

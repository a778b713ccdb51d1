"""Metric vs amount of preference data, one line per method: the Bootstrapped-PO paper's Figure 7.

Pi et al. (ECCV 2024) train BPO and SFT on growing subsets of the same data and show BPO ahead at
every size. Each point here is one eval report (``bpo eval ... --out REPORT.json``, see
:mod:`bpo.eval.report`) paired with the training run that produced the evaluated model.

**How the amount of data is counted** (:func:`count_training_data`), from the run's own files, by
replaying what ``bpo train`` did before its first step:

1. read ``data.train`` from ``<run>/config.yaml`` (records that failed to parse are not counted;
   with ``data.on_error=raise`` the run would not have started);
2. keep the negatives of ``data.sources`` (all when empty), at most ``data.max_negatives`` per record,
   dropping records left with none (:func:`bpo.train.data.select_negatives`);
3. draw the ``data.subset_fraction`` subset with ``data.subset_seed`` (:func:`bpo.train.data.subset`);
4. remove the records named in ``<run>/dropped.txt`` (over-long or broken, dropped at encoding).

Then ``records`` = records left and ``pairs`` = sum over them of their negatives: one (chosen,
rejected) pair per negative, the pairs the loss sees each epoch. An SFT run trained on the same
file counts the same pairs (it learns from their chosen answers), which is what makes BPO and SFT
points comparable at equal x. Epochs are not multiplied in. ``--x records`` counts prompts instead
(use it for SFT data without negatives, where ``pairs`` is 0). A manifest may give the number
explicitly (a ``pairs`` column), which wins over the replay.

``data.train`` is resolved as written when absolute; when relative it was relative to the folder
``bpo train`` ran in, recovered from ``run.output_dir`` (e.g. ``outputs/run1`` and a run folder
``/x/outputs/run1`` give ``/x``); failing that, relative to the current folder. If a checkpoint of
the run recorded the data file's sha256, a different file is an error (the count would be wrong).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bpo.analysis.plotting import color, new_figure, save_figure, write_csv
from bpo.data.records import read_records
from bpo.errors import BpoError
from bpo.eval.report import direction, flatten_metrics, load_report
from bpo.io import file_sha256
from bpo.io import read_text as _read_text  # one-line errors naming the file

X_KINDS = ("pairs", "records")
CSV_COLUMNS = ("method", "label", "x", "metric", "value", "run_dir", "report", "records", "pairs",
               "subset_fraction", "count_source")
POINT_COLUMNS = ("method", "x", "n", "mean", "std")


@dataclass
class Entry:
    """One point to plot: a method name, the training run, its eval report, an optional explicit count."""

    method: str
    run_dir: Path | None
    report: Path
    pairs: int | None = None
    label: str = ""


# ---- counting training data -------------------------------------------------------------------------------
def _load_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise BpoError(f"{run_dir}: no config.yaml; pass the output_dir of a `bpo train` run, or give the count "
                       "in the manifest's `pairs` column")
    try:
        cfg = yaml.safe_load(_read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise BpoError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict):
        raise BpoError(f"{path}: has no data section; is it a `bpo train` config?")
    return cfg


def resolve_train_file(run_dir: Path, cfg: dict) -> Path:
    """Where ``data.train`` was when the run trained (see the module docstring for the rule)."""
    train = Path(str(cfg["data"].get("train") or ""))
    if not str(train) or str(train) == ".":
        raise BpoError(f"{run_dir}/config.yaml: data.train is empty")
    if train.is_absolute():
        candidates = [train]
    else:
        candidates = []
        out = Path(str((cfg.get("run") or {}).get("output_dir") or ""))
        resolved = run_dir.resolve()
        if str(out) and not out.is_absolute() and resolved.parts[-len(out.parts):] == out.parts:
            candidates.append(Path(*resolved.parts[:-len(out.parts)]) / train)
        candidates.append(train)
    for c in candidates:
        if c.is_file():
            return c
    raise BpoError(f"{run_dir}: training data {train} (config.yaml data.train) not found (tried "
                   f"{', '.join(str(c) for c in candidates)}); run from the folder you trained in, or give the "
                   "count in the manifest's `pairs` column")


_RECORD_RE = re.compile(r"record ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def dropped_ids(run_dir: Path) -> set[str]:
    """Record ids named in ``dropped.txt`` (messages of :class:`bpo.errors.RecordError`: ``record 'id'``)."""
    import ast

    path = run_dir / "dropped.txt"
    if not path.is_file():
        return set()
    ids = set()
    for line in _read_text(path).splitlines():
        m = _RECORD_RE.search(line)
        if m:
            ids.add(str(ast.literal_eval(m.group(1))))
    return ids


def _checkpoint_sha(run_dir: Path) -> str | None:
    import json

    for state in sorted(run_dir.glob("checkpoint-*/state.json")):
        try:
            sha = json.loads(_read_text(state)).get("fingerprint", {}).get("data_sha256")
        except (OSError, ValueError, AttributeError, BpoError):  # an unreadable checkpoint: try the next
            continue
        if sha:
            return sha
    return None


def count_training_data(run_dir: str | os.PathLike) -> dict:
    """``{records, pairs, data, subset_fraction, dropped, loss_type}`` for a ``bpo train`` run folder."""
    from bpo.train.data import select_negatives, subset

    run_dir = Path(run_dir)
    cfg = _load_config(run_dir)
    data = cfg["data"]
    train = resolve_train_file(run_dir, cfg)
    sha = _checkpoint_sha(run_dir)
    if sha is not None and sha != file_sha256(train):
        raise BpoError(f"{run_dir}: {train} has changed since the run trained (its checkpoint recorded another "
                       "sha256); restore the file or give the count in the manifest's `pairs` column")
    records = list(read_records(train, on_error="skip", errors=[]))
    records = select_negatives(records, list(data.get("sources") or []), int(data.get("max_negatives") or 0))
    fraction = float(data.get("subset_fraction", 1.0))
    records = subset(records, fraction, int(data.get("subset_seed", 0)))
    dropped = dropped_ids(run_dir)
    kept = [r for r in records if r.id not in dropped]
    return {"records": len(kept), "pairs": sum(len(r.rejected) for r in kept), "data": str(train),
            "subset_fraction": fraction, "dropped": len(records) - len(kept),
            "loss_type": (cfg.get("loss") or {}).get("type")}


# ---- reports ---------------------------------------------------------------------------------------------
def report_metric(report: dict, metric: str, path) -> float:
    """A metric of a report by dotted name (``chair_i``, ``per_split.random.f1``)."""
    flat = flatten_metrics(report["metrics"])
    if metric not in flat:
        known = ", ".join(sorted(flat)[:12])
        raise BpoError(f"{path}: no metric {metric!r} in this {report.get('task')!r} report (has: {known})")
    value = flat[metric]
    if value is None:
        raise BpoError(f"{path}: metric {metric!r} is null in this report")
    return float(value)


def run_of_report(report: dict, path: Path) -> Path:
    """The training run a report evaluated: the run folder holding its adapter (or model) with config.yaml."""
    for key in ("adapter", "model"):
        value = report.get(key)
        if not value:
            continue
        p = Path(value)
        for cand in (p, p.parent):
            if (cand / "config.yaml").is_file():
                return cand
    raise BpoError(f"{path}: cannot tell which training run this report evaluated (its 'adapter'/'model' fields "
                   "do not point into a `bpo train` output folder); list it in a manifest with its run_dir")


def reports_in_run(run_dir: Path, metric: str) -> Path:
    """The one eval report with ``metric`` inside a run folder (``*.json`` there or in ``eval/``)."""
    found = []
    for p in sorted(list(run_dir.glob("*.json")) + list(run_dir.glob("eval/*.json"))):
        try:
            rep = load_report(p)
        except BpoError:
            continue
        if metric in flatten_metrics(rep["metrics"]):
            found.append(p)
    if len(found) != 1:
        what = "no eval report" if not found else f"{len(found)} eval reports ({', '.join(map(str, found))})"
        raise BpoError(f"{run_dir}: {what} with metric {metric!r} in the run folder or its eval/; pass the report "
                       "file, or list (method, run_dir, report) in a manifest")
    return found[0]


# ---- inputs: manifests, reports, run folders ---------------------------------------------------------------
MANIFEST_KEYS = ("method", "run_dir", "report", "pairs", "label")


def _entry(row: dict, base: Path, where: str) -> Entry:
    """One manifest row; relative paths are relative to the manifest's folder."""
    row = {str(k).strip(): v for k, v in row.items() if k is not None}
    unknown = set(row) - set(MANIFEST_KEYS)
    if unknown:
        raise BpoError(f"{where}: unknown column(s) {', '.join(sorted(unknown))}; use {', '.join(MANIFEST_KEYS)}")
    method, report = str(row.get("method") or "").strip(), str(row.get("report") or "").strip()
    if not method or not report:
        raise BpoError(f"{where}: each row needs 'method' and 'report' (and 'run_dir' or 'pairs')")
    run = str(row.get("run_dir") or "").strip()
    pairs = row.get("pairs")
    if pairs in ("", None):
        pairs = None
    else:
        try:
            pairs = int(float(pairs))
        except (TypeError, ValueError):
            raise BpoError(f"{where}: 'pairs' must be a number, not {pairs!r}") from None
    if not run and pairs is None:
        raise BpoError(f"{where}: give 'run_dir' (the count is read from the run) or an explicit 'pairs'")
    return Entry(method, base / run if run else None, base / report, pairs, str(row.get("label") or "").strip())


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    """A CSV with a header row, or YAML (a list of mappings, or ``{runs: [...]}``), of method/run_dir/report."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BpoError(f"{path}: manifest not found")
    base = path.parent
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(_read_text(path), newline="")))
        return [_entry(r, base, f"{path}:{i}") for i, r in enumerate(rows, 2)]
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise BpoError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict):
        data = data.get("runs")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BpoError(f"{path}: a YAML manifest is a list of {{method, run_dir, report}} mappings "
                       "(or has them under 'runs:')")
    return [_entry(r, base, f"{path}[{i}]") for i, r in enumerate(data, 1)]


def default_method(loss_type: str | None, rename: dict[str, str]) -> str:
    name = loss_type or "unknown"
    return rename.get(name, name)


def gather_entries(inputs: list[str], metric: str, rename: dict[str, str] | None = None) -> list[Entry]:
    """Entries from manifests (.csv/.yaml/.yml), eval report files, or run folders, in the given order.

    For a report or a run folder the method is the run's ``loss.type`` (``sft``, ``sigmoid``, ...)
    passed through ``rename`` (e.g. ``{"sigmoid": "BPO", "sft": "SFT"}``).
    """
    rename = rename or {}
    entries: list[Entry] = []
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix.lower() in (".csv", ".yaml", ".yml"):
            entries += read_manifest(p)
            continue
        if p.is_dir():
            run, report = p, reports_in_run(p, metric)
        elif p.is_file():
            report, run = p, run_of_report(load_report(p), p)
        else:
            raise BpoError(f"{item}: no such file or folder (give manifests, eval reports or run folders)")
        method = default_method((_load_config(run).get("loss") or {}).get("type"), rename)
        entries.append(Entry(method, run, report))
    if not entries:
        raise BpoError("no runs to plot")
    return entries


# ---- rows, points and the plot -----------------------------------------------------------------------------
def scaling_rows(entries: list[Entry], metric: str, x: str = "pairs") -> list[dict]:
    """One row per entry: method, x (pairs or records), the metric value and how x was found."""
    if x not in X_KINDS:
        raise BpoError(f"--x must be one of {X_KINDS}, not {x!r}")
    rows = []
    for e in entries:
        value = report_metric(load_report(e.report), metric, e.report)
        if x == "pairs" and e.pairs is not None:
            info, xv, source = {}, e.pairs, "manifest"
        elif e.run_dir is None:
            raise BpoError(f"{e.report}: --x {x} needs the run's run_dir in the manifest (a 'pairs' column "
                           "only gives x for --x pairs)")
        else:
            info = count_training_data(e.run_dir)
            xv, source = info[x], f"run ({x})"
        if x == "pairs" and xv == 0 and e.pairs is None:
            raise BpoError(f"{e.run_dir}: its training records have no negatives (0 pairs); use --x records, "
                           "or give 'pairs' in a manifest")
        rows.append({"method": e.method, "label": e.label or (e.run_dir.name if e.run_dir else e.report.stem),
                     "x": xv, "metric": metric, "value": value, "run_dir": str(e.run_dir or ""),
                     "report": str(e.report), "records": info.get("records"), "pairs": info.get("pairs"),
                     "subset_fraction": info.get("subset_fraction"), "count_source": source})
    return rows


def points(rows: list[dict]) -> list[dict]:
    """Mean and population std of the metric per (method, x): repeated seeds of one size become one point."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["x"]), []).append(r["value"])
    out = []
    for (method, xv), vals in groups.items():
        mean = sum(vals) / len(vals)
        out.append({"method": method, "x": xv, "n": len(vals), "mean": mean,
                    "std": math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))})
    order = list(dict.fromkeys(r["method"] for r in rows))
    return sorted(out, key=lambda p: (order.index(p["method"]), p["x"]))


def plot_scaling(pts: list[dict], metric: str, x: str = "pairs", *, logx: bool = False):
    """Line per method (error bars = std over repeated points at one size); returns the Figure."""
    fig, (ax,) = new_figure(1, panel_size=(6.4, 4.2))
    methods = list(dict.fromkeys(p["method"] for p in pts))
    for i, method in enumerate(methods):
        sel = [p for p in pts if p["method"] == method]
        ax.errorbar([p["x"] for p in sel], [p["mean"] for p in sel], yerr=[p["std"] for p in sel], marker="o",
                    capsize=3, color=color(i), label=method)
    better = {1: " (higher is better)", -1: " (lower is better)"}.get(direction(metric), "")
    ax.set_xlabel("preference pairs in the training data" if x == "pairs" else "training records (prompts)")
    ax.set_ylabel(metric + better)
    ax.set_title(f"{metric} vs amount of training data")
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    return fig


def analyze_scaling(inputs: list[str], out_dir: str | os.PathLike, *, metric: str, x: str = "pairs",
                    rename: dict[str, str] | None = None, logx: bool = False) -> dict:
    """Write ``scaling.csv`` (one row per report), ``scaling_points.csv`` and ``scaling.png``."""
    entries = gather_entries(inputs, metric, rename)
    rows = scaling_rows(entries, metric, x)
    pts = points(rows)
    out = Path(out_dir)
    fig = plot_scaling(pts, metric, x, logx=logx)
    files = [write_csv(out / "scaling.csv", rows, CSV_COLUMNS),
             write_csv(out / "scaling_points.csv", pts, POINT_COLUMNS), save_figure(fig, out / "scaling.png")]
    return {"rows": rows, "points": pts, "figure": fig, "files": files}

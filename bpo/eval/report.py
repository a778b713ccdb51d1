"""Eval reports: one JSON file per evaluation, and comparison of reports.

Every ``bpo eval`` run writes (atomically)::

    {"task": "chair", "metrics": {...}, "counts": {...},
     "details": [...per item...]  |  "details_path": "run.details.jsonl",
     "inputs": {"path/to/responses.jsonl": "<sha256>", ...}, "input_roles": {"responses": path, ...},
     "model": "...", "adapter": "...", "config": {...}, "created": "2026-...Z", "bpo_version": "0.1.0"}

so a number can be traced to the exact files that produced it. :func:`compare` lines up the metrics
of two reports (nested metrics are flattened with dots: ``per_split.random.f1``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path

from bpo import __version__
from bpo.errors import BpoError
from bpo.eval.protocols import describe
from bpo.io import file_sha256, read_json, write_json, write_jsonl

# Direction of the last component of a metric name; others (counts, yes_ratio) are neutral.
HIGHER_IS_BETTER = frozenset({"recall", "accuracy", "precision", "f1", "safety_rate", "total", "score",
                              "relative_score", "judgment_accuracy",
                              "cover", "amber_score", "win_rate"})  # AMBER, VLGuard
LOWER_IS_BETTER = frozenset({"chair_s", "chair_i", "attack_success_rate", "unknown_rate", "unknown_ratio",
                             "inconsistent_rate", "consistent_wrong_rate",
                             "unknown",
                             "chair", "hal", "cog", "refusal_rate"})  # AMBER, VLGuard


def build_report(task: str, metrics: dict, *, details: list[dict] | None = None,
                 inputs: dict[str, str | os.PathLike | None], counts: dict | None = None,
                 model: str | None = None, adapter: str | None = None, config: dict | None = None,
                 protocol: dict | None = None) -> dict:
    """The report dict; ``inputs`` maps a role ("responses", "gt") to a file, hashed here.

    ``protocol`` is the block of :func:`bpo.eval.protocols.describe`; without one, a minimal block
    (task, evaluator, judge; unknown image list and token budget) is recorded.
    """
    roles = {role: str(p) for role, p in inputs.items() if p is not None}
    report = {
        "task": task,
        "metrics": metrics,
        "counts": counts or {},
        "inputs": {p: file_sha256(p) for p in roles.values()},
        "input_roles": roles,
        "model": model,
        "adapter": adapter,
        "config": config or {},
        "protocol": protocol if protocol is not None else describe(task, [], config=config),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bpo_version": __version__,
    }
    if details is not None:
        report["details"] = details
    return report


def write_report(path: str | os.PathLike, report: dict, details_out: str | os.PathLike | None = None) -> None:
    """Write the report atomically; with ``details_out`` the per-item details go to that JSONL."""
    report = dict(report)
    if details_out is not None:
        write_jsonl(details_out, report.pop("details", []))
        report["details_path"] = str(details_out)
    write_json(path, report)


def load_report(path: str | os.PathLike) -> dict:
    path = Path(path)
    report = read_json(path, "report")
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict) or "task" not in report:
        raise BpoError(f"{path}: not a bpo eval report (needs 'task' and 'metrics'); "
                       "pass files written by `bpo eval ... --out`")
    return report


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float | None]:
    """Numeric leaves of a nested metrics dict, keyed by dotted path (``confusion`` is kept too)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = value
    return out


def direction(metric: str) -> int:
    """+1 higher is better, -1 lower is better, 0 neutral."""
    last = metric.rsplit(".", 1)[-1]
    return 1 if last in HIGHER_IS_BETTER else -1 if last in LOWER_IS_BETTER else 0


def compare(a: dict, b: dict) -> list[dict]:
    """Rows ``{metric, a, b, diff, better}`` for the metrics of report ``a`` and ``b`` (``diff = b - a``).

    ``better`` is "a", "b", "=" or "" (neutral metric or a missing value). Metrics present in only
    one report appear with ``None`` on the other side.
    """
    fa, fb = flatten_metrics(a["metrics"]), flatten_metrics(b["metrics"])
    rows = []
    for metric in list(fa) + [m for m in fb if m not in fa]:
        va, vb = fa.get(metric), fb.get(metric)
        diff = vb - va if va is not None and vb is not None else None
        better = ""
        if diff is not None and direction(metric):
            if math.isclose(diff, 0.0, abs_tol=1e-12):
                better = "="
            else:
                better = "b" if diff * direction(metric) > 0 else "a"
        rows.append({"metric": metric, "a": va, "b": vb, "diff": diff, "better": better})
    return rows


def compare_notes(reports: list[dict]) -> list[str]:
    """Warnings that make a comparison suspect (different tasks or ground truth)."""
    notes = []
    tasks = {r["task"] for r in reports}
    if len(tasks) > 1:
        notes.append(f"reports are for different tasks ({', '.join(sorted(tasks))})")
    gts = set()
    for r in reports:
        gt = (r.get("input_roles") or {}).get("gt") or (r.get("input_roles") or {}).get("records")
        if gt is not None:
            gts.add((r.get("inputs") or {}).get(gt))
    if len(gts) > 1:
        notes.append("the reports were computed on different ground-truth files (sha256 differ)")
    return notes


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def compare_table(reports: list[dict], labels: list[str]) -> str:
    """A table of every metric across reports, with differences to the first report."""
    if len(reports) < 2:
        raise BpoError("compare needs at least two reports")
    base = reports[0]
    per = [compare(base, r) for r in reports[1:]]
    metrics = [row["metric"] for row in per[0]]
    for rows in per[1:]:
        metrics += [row["metric"] for row in rows if row["metric"] not in metrics]
    lookup = [{row["metric"]: row for row in rows} for rows in per]
    headers = ["metric", labels[0], *labels[1:]] + [f"d({lab})" for lab in labels[1:]]
    if len(reports) == 2:
        headers.append("better")
    out_rows = []
    base_flat = flatten_metrics(base["metrics"])
    for m in metrics:
        vals = [lookup[k].get(m, {}).get("b") for k in range(len(per))]
        diffs = [_signed(lookup[k].get(m, {}).get("diff")) for k in range(len(per))]
        row = [m, base_flat.get(m), *vals, *diffs]
        if len(reports) == 2:
            better = lookup[0][m]["better"]
            row.append({"a": labels[0], "b": labels[1]}.get(better, better))
        out_rows.append(row)
    return format_table(headers, out_rows)


def _signed(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if isinstance(value, float) else f"{value:+d}"


def report_labels(paths: list[str]) -> list[str]:
    """Short column labels: file stems, or full paths when stems collide."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def summary_table(task: str, metrics: dict, counts: dict | None = None) -> str:
    """A short human-readable table of the headline metrics (and per split/category rows)."""
    keys = {
        "chair": ["chair_s", "chair_i", "recall", "objects_per_response", "n"],
        "pope": ["accuracy", "precision", "recall", "f1", "yes_ratio", "unknown", "n"],
        "safety": ["safety_rate", "attack_success_rate", "unknown_rate", "n"],
    }.get(task) or [k for k, v in metrics.items() if not isinstance(v, dict)]
    groups = [("all", metrics)]
    for sub in ("per_split", "per_category"):
        groups += list((metrics.get(sub) or {}).items())
    table = format_table(["", *keys], [[name, *[m.get(k) for k in keys]] for name, m in groups])
    skipped = {k: v for k, v in (counts or {}).items() if k.startswith("missing") and v}
    if skipped:
        table += "\nskipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items())
    return table

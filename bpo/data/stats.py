"""Summary numbers for a record file: sources, images, turns, lengths, generation rejections.

:func:`compute_stats` is a pure function of the records (a dict that is JSON-serialisable, with
string keys throughout); :func:`format_stats` renders it as text for ``bpo data stats``.
Lengths are whitespace word counts, the unit the Bootstrapped-PO loader filters on (350 words).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable

from bpo.data.records import Record

GROUP_KEYS = ("split", "category")


def length_summary(lengths: list[int]) -> dict:
    """``{"n", "mean", "median", "max"}`` of word counts (zeros for an empty list)."""
    if not lengths:
        return {"n": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {"n": len(lengths), "mean": sum(lengths) / len(lengths),
            "median": float(statistics.median(lengths)), "max": max(lengths)}


def _words(text: str) -> int:
    return len(text.split())


def _reasons(items, counter: Counter) -> None:
    """Count ``[{"reason": ...}, ...]`` (strings count as their own reason; a bare int is that
    many unspecified rejections)."""
    if isinstance(items, bool):
        return
    if isinstance(items, int):
        counter["unspecified"] += items
        return
    if not isinstance(items, list):
        return
    for it in items:
        if isinstance(it, dict):
            counter[str(it.get("reason", "unspecified"))] += 1
        elif isinstance(it, str):
            counter[it] += 1


def compute_stats(records: Iterable[Record]) -> dict:
    """Counts per negative source, image presence, user turns, word lengths, rejection reasons,
    and per ``meta.split`` / ``meta.category`` (only keys that occur are reported)."""
    n = with_images = n_images = with_rejected = 0
    sources: Counter = Counter()
    turns: Counter = Counter()
    chosen_len: list[int] = []
    neg_len: dict[str, list[int]] = {}
    reasons: Counter = Counter()
    groups: dict[str, Counter] = {k: Counter() for k in GROUP_KEYS}
    for rec in records:
        n += 1
        if rec.images:
            with_images += 1
            n_images += len(rec.images)
        if rec.rejected:
            with_rejected += 1
        turns[str(sum(1 for m in rec.prompt if m.get("role") == "user"))] += 1
        chosen_len.append(_words(rec.chosen))
        for neg in rec.rejected:
            sources[neg.source] += 1
            neg_len.setdefault(neg.source, []).append(_words(neg.text))
            _reasons(neg.meta.get("rejected_attempts"), reasons)
        _reasons(rec.meta.get("rejections"), reasons)
        for key in GROUP_KEYS:
            if key in rec.meta and rec.meta[key] is not None:
                groups[key][str(rec.meta[key])] += 1
    return {
        "records": n,
        "with_images": with_images,
        "without_images": n - with_images,
        "image_refs": n_images,
        "with_rejected": with_rejected,
        "chosen_only": n - with_rejected,
        "negatives": sum(sources.values()),
        "negatives_per_source": dict(sorted(sources.items())),
        "user_turns": dict(sorted(turns.items(), key=lambda kv: int(kv[0]))),
        "words": {"chosen": length_summary(chosen_len),
                  "rejected": {s: length_summary(v) for s, v in sorted(neg_len.items())}},
        "rejection_reasons": dict(reasons.most_common()),
        "groups": {k: dict(sorted(c.items())) for k, c in groups.items() if c},
    }


def _len_line(name: str, s: dict) -> str:
    return f"  {name:<12} n={s['n']:<6} mean={s['mean']:.1f}  median={s['median']:.1f}  max={s['max']}"


def format_stats(stats: dict, title: str = "") -> str:
    """Human-readable rendering of :func:`compute_stats` output."""
    n = stats["records"]
    lines = [title] if title else []
    lines += [
        f"records: {n}",
        f"  with images: {stats['with_images']} ({stats['image_refs']} image refs), "
        f"without: {stats['without_images']}",
        f"  with rejected: {stats['with_rejected']}, chosen-only: {stats['chosen_only']}",
        f"negatives: {stats['negatives']}",
    ]
    lines += [f"  {src}: {c}" for src, c in stats["negatives_per_source"].items()]
    lines.append("user turns per prompt:")
    lines += [f"  {k}: {c}" for k, c in stats["user_turns"].items()]
    lines.append("response length (words):")
    lines.append(_len_line("chosen", stats["words"]["chosen"]))
    lines += [_len_line(src, s) for src, s in stats["words"]["rejected"].items()]
    if stats["rejection_reasons"]:
        lines.append("generation rejections:")
        lines += [f"  {r}: {c}" for r, c in stats["rejection_reasons"].items()]
    for key, counts in stats["groups"].items():
        lines.append(f"per {key}:")
        lines += [f"  {v}: {c}" for v, c in counts.items()]
    return "\n".join(lines)

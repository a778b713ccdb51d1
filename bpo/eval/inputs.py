"""Reading response files and ground truth, and joining them by id.

A response file (written by ``bpo generate``) is JSONL, one row per answered record::

    {"id": "pope-17", "response": "Yes, there is a dog.", "prompt": "...", "meta": {...}}

Ground truth is a file of bpo records (only ``id`` and ``meta`` are read, so eval sets need no
``chosen``/``rejected``) or, for CHAIR, a COCO instances JSON (see :mod:`bpo.eval.chair`).

The join never silently drops items: an id on one side only is an error unless the caller asked
for ``on_missing="skip"``, in which case it is counted and reported with the metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from bpo.errors import BpoError, RecordError
from bpo.io import read_jsonl

ON_MISSING = ("error", "skip")


@dataclass
class Joined:
    """Matched ``(id, response_row, truth)`` triples and what could not be matched."""

    items: list[tuple[str, dict, object]]
    missing_response: list[str] = field(default_factory=list)  # truth ids with no response
    missing_truth: list[str] = field(default_factory=list)  # response ids with no truth

    def counts(self) -> dict:
        return {"matched": len(self.items), "missing_response": len(self.missing_response),
                "missing_truth": len(self.missing_truth)}


def load_responses(path: str | os.PathLike) -> dict[str, dict]:
    """``{id: row}`` from a response JSONL; each row gets ``_where`` = ``file:line`` for errors."""
    rows: dict[str, dict] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        rid = obj.get("id")
        if rid is None or str(rid).strip() == "":
            raise RecordError("response row without an 'id'; every row must name the record it answers",
                              where=where)
        rid = str(rid)
        if rid in rows:
            raise RecordError("duplicate id in the response file; keep one response per record",
                              where=where, record_id=rid)
        if not isinstance(obj.get("response"), str):
            raise RecordError("missing or non-string 'response'", where=where, record_id=rid)
        obj["_where"] = where
        rows[rid] = obj
    if not rows:
        raise BpoError(f"{path}: no responses in the file")
    return rows


def load_truth_records(path: str | os.PathLike,
                       extract: Callable[[dict, str, str], object]) -> dict[str, object]:
    """``{id: extract(record, id, where)}`` for every row of a record JSONL.

    ``extract`` pulls the ground truth out of a record (a dict whose ``meta`` is guaranteed to be a
    dict) and raises :class:`RecordError` (with the ``where`` it is given) when it is missing.
    """
    truth: dict[str, object] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        rid = obj.get("id")
        if rid is None or str(rid).strip() == "":
            raise RecordError("record without an 'id'", where=where)
        rid = str(rid)
        if rid in truth:
            raise RecordError("duplicate id in the ground-truth file", where=where, record_id=rid)
        obj["meta"] = obj.get("meta") or {}
        if not isinstance(obj["meta"], dict):
            raise RecordError("'meta' must be an object", where=where, record_id=rid)
        truth[rid] = extract(obj, rid, where)
    if not truth:
        raise BpoError(f"{path}: no records in the ground-truth file")
    return truth


def join(responses: dict[str, dict], truth: dict[str, object], *, on_missing: str = "error",
         responses_path: str = "responses", truth_path: str = "ground truth",
         truth_is_superset: bool = False, key: Callable[[str, dict], str | None] | None = None) -> Joined:
    """Match responses to ground truth by id.

    ``key(id, row)`` maps a response to a truth id (default: the id itself). With
    ``truth_is_superset`` (a COCO file with 40k images for a 300-image eval) unanswered truth
    items are not "missing". Missing items raise a :class:`BpoError` naming examples and the fix,
    unless ``on_missing == "skip"``.
    """
    if on_missing not in ON_MISSING:
        raise BpoError(f"--on-missing must be one of {ON_MISSING}, not {on_missing!r}")
    items, missing_truth, used = [], [], set()
    for rid, row in responses.items():
        tid = key(rid, row) if key else rid
        if tid is None or tid not in truth:
            missing_truth.append(rid)
            continue
        used.add(tid)
        items.append((rid, row, truth[tid]))
    missing_response = [] if truth_is_superset else [t for t in truth if t not in used]
    joined = Joined(items, missing_response, missing_truth)
    if on_missing == "error":
        problems = []
        if missing_truth:
            problems.append(f"{len(missing_truth)} response id(s) not in {truth_path} "
                            f"(e.g. {_examples(missing_truth)})")
        if missing_response:
            problems.append(f"{len(missing_response)} ground-truth id(s) without a response in "
                            f"{responses_path} (e.g. {_examples(missing_response)})")
        if problems:
            raise BpoError("; ".join(problems) + ". Check that both files come from the same eval set, "
                           "finish the generation run, or pass --on-missing skip to score the matched "
                           "ids only (the skips are counted in the report)")
    if not items:
        raise BpoError(f"no response id in {responses_path} matches an id in {truth_path}")
    return joined


def _examples(ids: list[str], n: int = 3) -> str:
    return ", ".join(repr(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")

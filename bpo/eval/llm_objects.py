"""Optional LLM-assisted object extraction for CHAIR, reported beside the rule-based numbers.

``bpo eval chair ... --llm-objects {llm,hf}`` asks a judge to list the physical objects each
description claims are present (template ``chair_objects_v1``; reply exactly
``OBJECTS: dog; frisbee; person`` or ``OBJECTS: none``). The listed names are mapped to canonical
objects with the same vocabulary as the rule-based extractor (an exact name or synonym first, else
the vocabulary's phrase matcher on the name, so "brown dog" is a dog); names that map to nothing
are kept per item as ``unmapped`` (objects outside the vocabulary, which CHAIR cannot score).

What it changes: the judge reads negation and context ("there is no dog" lists no dog; "an orange
shirt" lists a shirt, not an orange), which the rule-based matcher cannot. What it does not: the
ground truth, the vocabulary and the CHAIR formulas are the same (:func:`bpo.eval.chair.chair_metrics`),
so the two sets of numbers differ only by extraction. A description whose reply cannot be parsed is
``unknown``: left out of the LLM numbers (``llm_objects.unknown``), never treated as "no objects".
Replies are cached by content hash like every judge call (:mod:`bpo.eval.judging`).
"""

from __future__ import annotations

import re

from bpo.data.objects import Vocabulary
from bpo.eval.chair import chair_metrics
from bpo.eval.judging import GradeRequest, grade_counts, mean

TEMPLATE = "chair_objects_v1"
FIELDS = ("response",)
_OBJECTS_RE = re.compile(r"OBJECTS: (.+)")


def parse_objects(reply: str) -> list[str] | None:
    """Lower-cased object names from exactly one line ``OBJECTS: a; b; c`` (``OBJECTS: none`` = ``[]``).

    Empty items (``a;; b``, a trailing ``;``), "none" among other names, or any other line make the
    reply malformed (``None``).
    """
    text = reply.strip()
    m = _OBJECTS_RE.fullmatch(text)
    if not m or "\n" in text:
        return None
    body = m.group(1).strip()
    if body.lower() == "none":
        return []
    names = [x.strip().lower() for x in body.split(";")]
    if any(not x or x == "none" for x in names):
        return None
    return list(dict.fromkeys(names))


def map_objects(names: list[str], vocab: Vocabulary) -> tuple[list[str], list[str]]:
    """``(canonical objects, unmapped names)``: exact name/synonym first, else phrases inside the name."""
    mentioned, unmapped = [], []
    for name in names:
        canon = vocab.canonical(name)
        found = [canon] if canon else [mt.canonical for mt in vocab.find(name)[0]]
        if found:
            mentioned += found
        else:
            unmapped.append(name)
    return list(dict.fromkeys(mentioned)), unmapped


def llm_chair_item(names: list[str], gt: list[str], vocab: Vocabulary) -> dict:
    """Per-response details in the shape :func:`bpo.eval.chair.chair_metrics` reads."""
    mentioned, unmapped = map_objects(names, vocab)
    gt_set = list(dict.fromkeys(gt))
    return {"listed": names, "mentioned": mentioned, "hallucinated": [o for o in mentioned if o not in gt_set],
            "gt": gt_set, "missed": [o for o in gt_set if o not in mentioned], "unmapped": unmapped}


def jaccard(a: list[str], b: list[str]) -> float:
    """|A & B| / |A | B|, 1.0 when both are empty."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def llm_chair_metrics(items: list[dict | None], rule_mentioned: list[list[str]]) -> dict:
    """CHAIR over the items with a parsed extraction, plus ``unknown`` and the mean Jaccard agreement
    of the LLM's and the rule-based extractor's object sets (``mention_agreement``)."""
    known = [(d, r) for d, r in zip(items, rule_mentioned) if d is not None]
    base = {"chair_s": None, "chair_i": None, "recall": None, "objects_per_response": None, "n": 0} if not known \
        else chair_metrics([d for d, _ in known])
    base["unknown"] = len(items) - len(known)
    base["mention_agreement"] = mean(jaccard(d["mentioned"], r) for d, r in known)
    base["n_unmapped"] = sum(len(d["unmapped"]) for d, _ in known)
    return base


def add_llm_objects(grader, metrics: dict, details: list[dict], responses: list[str], gts: list[list[str]],
                    vocab: Vocabulary) -> tuple[dict, dict]:
    """Run the extraction for ``bpo eval chair`` with ``grader`` (a :class:`bpo.eval.judging.Grader` of
    :data:`TEMPLATE` and :func:`parse_objects`, closed here): adds ``metrics["llm_objects"]`` and per-item
    ``llm_objects`` details; returns ``(counts, config)`` for the report."""
    try:
        grades = grader.grade([GradeRequest(d["id"], {"response": r}) for d, r in zip(details, responses)],
                              desc="llm objects")
    finally:
        grader.close()
    items = []
    for d, gs, gt in zip(details, grades, gts):
        g = gs[0]
        item = None if g.value is None else llm_chair_item(g.value, gt, vocab)
        items.append(item)
        d["llm_objects"] = {"status": "unknown" if item is None else "parsed", **(item or {}), **g.to_dict()}
    llm = llm_chair_metrics(items, [d["mentioned"] for d in details])
    metrics["llm_objects"] = llm
    print(_line("rule-based objects", metrics) + "\n" + _line("LLM-listed objects", llm)
          + (f"  (unknown: {llm['unknown']})" if llm["unknown"] else ""))
    return grade_counts(grader, grades), {"llm_objects": grader.describe()}


def _line(name: str, m: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    return f"{name}: CHAIR_s {f(m['chair_s'])}  CHAIR_i {f(m['chair_i'])}  recall {f(m['recall'])}  n {m['n']}"

"""LLaVA-Bench (in-the-wild) (Liu et al., 2023): a judge rates model vs reference answers.

Inputs, in the benchmark's own formats (JSONL, one object per line):

* ``questions.jsonl``: ``{"question_id": 0, "image": "001.jpg", "text": "...", "category": "conv"}``
  (categories ``conv``, ``detail``, ``complex``; others are kept as their own groups);
* reference answers (``answers_gpt4.jsonl``): ``{"question_id": 0, "text": "..."}``;
* optional ``context.jsonl``: ``{"image": "001.jpg", "caption": "..." | [...]}``, the text the judge
  gets instead of the image (without it the judge sees only question and answers);
* model answers: ``bpo generate`` rows ``{"id": "<question_id>", "response": "..."}``.

The judge (template ``llavabench_review_v1``) rates both answers on helpfulness, relevance,
accuracy and level of detail, each an integer 1-10, replying with exactly two lines
``SCORES 1: h r a d`` / ``SCORES 2: h r a d``. As in LLaVA's review script, answer 1 is the
reference and answer 2 the model; ``--both-orders`` also asks with the model first and averages.

Aggregation (:func:`llavabench_metrics`): an answer's score on a question is the mean of its four
ratings, averaged over the question's parsed reviews (orders x samples). Per category and over
all questions::

    relative_score = 100 * sum_q model_q / sum_q reference_q   (= model mean / reference mean)

which is the number LLaVA papers report. ``per_criterion`` gives the same ratio per criterion.
Departures from LLaVA's script: four criteria rated separately (it asks one holistic score that
"considers" them), a strict reply format, and a review it cannot parse is ``unknown`` (left out and
counted) rather than the script's ``[-1, -1]``, which is averaged in as a score.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from bpo.errors import BpoError, RecordError
from bpo.eval.judging import GradeRequest, grade_counts, mean
from bpo.eval.report import format_table
from bpo.io import read_jsonl

TEMPLATE = "llavabench_review_v1"
FIELDS = ("answer_1", "answer_2", "context", "question")
CRITERIA = ("helpfulness", "relevance", "accuracy", "detail")
CATEGORIES = {"conv": "conversation", "detail": "detail", "complex": "complex_reasoning"}
ORDERS = ("reference_first", "model_first")
NO_CONTEXT = "(no description of the image is available; judge from the question and the answers)"


@dataclass
class BenchQuestion:
    id: str
    image: str
    text: str
    category: str


def _rows(path, required: tuple[str, ...]):
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        qid = obj.get("question_id")
        if qid is None or str(qid).strip() == "":
            raise RecordError("row without a 'question_id'", where=where)
        for key in required:
            if not isinstance(obj.get(key), str):
                raise RecordError(f"missing or non-string '{key}'", where=where, record_id=str(qid))
        yield where, str(qid), obj


def load_questions(path: str | os.PathLike) -> dict[str, BenchQuestion]:
    out: dict[str, BenchQuestion] = {}
    for where, qid, obj in _rows(path, ("image", "text", "category")):
        if qid in out:
            raise RecordError("duplicate question_id", where=where, record_id=qid)
        out[qid] = BenchQuestion(qid, obj["image"], obj["text"], CATEGORIES.get(obj["category"], obj["category"]))
    if not out:
        raise BpoError(f"{path}: no questions")
    return out


def load_references(path: str | os.PathLike) -> dict[str, str]:
    out: dict[str, str] = {}
    for where, qid, obj in _rows(path, ("text",)):
        if qid in out:
            raise RecordError("duplicate question_id", where=where, record_id=qid)
        out[qid] = obj["text"]
    return out


def load_context(path: str | os.PathLike) -> dict[str, str]:
    """``{image: caption text}``; a list caption (several lines or boxes) is joined with newlines."""
    out: dict[str, str] = {}
    for lineno, obj in read_jsonl(path):
        cap, image = obj.get("caption"), obj.get("image")
        if isinstance(cap, list) and all(isinstance(c, str) for c in cap):
            cap = "\n".join(cap)
        if not isinstance(image, str) or not isinstance(cap, str):
            raise RecordError("a context row needs 'image' (file name) and 'caption' (text or list of text)",
                              where=f"{path}:{lineno}")
        out[image] = cap
    return out


def llavabench_records(questions: dict[str, BenchQuestion], references: dict[str, str] | None,
                       image_prefix: str = "") -> list[dict]:
    rows = []
    for q in questions.values():
        row = {"id": q.id, "images": [image_prefix + q.image],
               "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.text}]}],
               "meta": {"category": q.category, "benchmark": "llava-bench-in-the-wild"}}
        if references and references.get(q.id, "").strip():
            row["chosen"] = references[q.id]
        rows.append(row)
    return rows


_LINE_RE = re.compile(r"SCORES ([12]): (\d{1,2}) (\d{1,2}) (\d{1,2}) (\d{1,2})")


def parse_review(reply: str) -> list[list[int]] | None:
    """``[[h, r, a, d] of answer 1, [...] of answer 2]`` when the reply is exactly the two lines."""
    lines = [ln.strip() for ln in reply.strip().splitlines()]
    if len(lines) != 2:
        return None
    out = []
    for label, line in zip("12", lines):
        m = _LINE_RE.fullmatch(line)
        if not m or m.group(1) != label:
            return None
        ratings = [int(x) for x in m.groups()[1:]]
        if not all(1 <= r <= 10 for r in ratings):
            return None
        out.append(ratings)
    return out


def question_ratings(reviews: list[tuple[str, list[list[int]] | None]]) -> dict | None:
    """Per-criterion ratings of model and reference, averaged over the parsed reviews of one question.

    ``reviews`` are ``(order, parsed review)``; in ``reference_first`` answer 1 is the reference.
    """
    model, ref = [], []
    for order, review in reviews:
        if review is None:
            continue
        first, second = review
        ref.append(first if order == "reference_first" else second)
        model.append(second if order == "reference_first" else first)
    if not model:
        return None
    return {"model": [mean(r[c] for r in model) for c in range(len(CRITERIA))],
            "reference": [mean(r[c] for r in ref) for c in range(len(CRITERIA))]}


def _group(ratings: list[dict | None]) -> dict:
    known = [r for r in ratings if r is not None]
    out: dict = {"relative_score": None, "model_mean": None, "reference_mean": None, "n": len(ratings),
                 "graded": len(known), "unknown": len(ratings) - len(known)}
    if not known:
        return out
    model = [mean(r["model"]) for r in known]
    ref = [mean(r["reference"]) for r in known]
    out.update(relative_score=100 * sum(model) / sum(ref), model_mean=mean(model), reference_mean=mean(ref))
    out["per_criterion"] = {c: 100 * sum(r["model"][i] for r in known) / sum(r["reference"][i] for r in known)
                            for i, c in enumerate(CRITERIA)}
    return out


def llavabench_metrics(items: list[tuple[str, dict | None]]) -> dict:
    """Relative scores overall and ``per_category`` from ``(category, question_ratings)`` per question."""
    if not items:
        raise BpoError("LLaVA-Bench needs at least one question")
    metrics = _group([r for _, r in items])
    cats = [c for c in CATEGORIES.values() if any(cat == c for cat, _ in items)]
    cats += sorted({cat for cat, _ in items} - set(cats))
    metrics["per_category"] = {c: _group([r for cat, r in items if cat == c]) for c in cats}
    return metrics


def summary(metrics: dict) -> str:
    keys = ("relative_score", "model_mean", "reference_mean", "n", "unknown")
    groups = list(metrics["per_category"].items()) + [("all", metrics)]
    return format_table(["LLaVA-Bench", "relative %", "model", "reference", "n", "unknown"],
                        [[name, *[m[k] for k in keys]] for name, m in groups])


def review_requests(joined, references: dict[str, str], context: dict[str, str] | None,
                    orders: tuple[str, ...], context_path: str | None) -> list[GradeRequest]:
    reqs = []
    for qid, row, q in joined:
        if context is None:
            ctx = NO_CONTEXT
        elif q.image in context:
            ctx = context[q.image]
        else:
            raise RecordError(f"no context row for image {q.image!r} in {context_path}; add it or drop --context",
                              record_id=qid)
        for order in orders:
            a1, a2 = (references[qid], row["response"]) if order == "reference_first" else \
                (row["response"], references[qid])
            reqs.append(GradeRequest(f"{qid}:{order}", {"context": ctx, "question": q.text, "answer_1": a1,
                                                         "answer_2": a2}))
    return reqs


def score_reviews(joined, references: dict[str, str], orders: tuple[str, ...], grades, grader) -> tuple[dict, list, dict]:
    """``(metrics, details, counts)`` from the judge's reviews: ``grades[j * len(orders) + o]`` are the samples
    of question ``j`` in order ``o`` (as :func:`review_requests` asked them)."""
    items, details = [], []
    for j, (qid, row, q) in enumerate(joined.items):
        per_q = grades[j * len(orders):(j + 1) * len(orders)]
        reviews = [(order, g.value) for order, gs in zip(orders, per_q) for g in gs]
        ratings = question_ratings(reviews)
        items.append((q.category, ratings))
        details.append({"id": qid, "category": q.category, "question": q.text, "answer": row["response"],
                        "reference": references[qid], "status": "graded" if ratings else "unknown",
                        "model_score": mean(ratings["model"]) if ratings else None,
                        "reference_score": mean(ratings["reference"]) if ratings else None,
                        "ratings": ratings, "reviews": [{"order": order, "sample": k, **g.to_dict()}
                                                        for order, gs in zip(orders, per_q)
                                                        for k, g in enumerate(gs)]})
    return llavabench_metrics(items), details, {**joined.counts(), **grade_counts(grader, grades)}

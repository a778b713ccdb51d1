"""MM-Vet (Yu et al., 2023): judge-graded open-ended answers, scored per capability.

Input is the benchmark's own ``mm-vet.json``::

    {"v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"],
              "question": "What is x in the equation?", "answer": "-1 <AND> -5"}, ...}

Capability tags: ``rec`` (recognition), ``ocr``, ``know`` (knowledge), ``gen`` (language
generation), ``spat`` (spatial awareness), ``math``. Model answers are ``bpo generate`` rows whose
``id`` is the question id (``v1_0``); ``bpo eval prepare mmvet`` writes the records to generate from.

Each answer is graded 0.0-1.0 against the ground truth by a judge with our few-shot template
(``bpo/eval/templates/mmvet_grade_v1.txt``; ``<AND>`` = all parts required, ``<OR>`` = any
alternative). The reply must be exactly ``SCORE: <x>`` with 0 <= x <= 1.

Aggregation (:func:`mmvet_metrics`), with ``s_q`` the mean of question ``q``'s parsed samples:

* ``total = 100 * mean_q s_q``;
* ``per_capability[c].score = 100 * mean of s_q over questions tagged c`` (a question with two tags
  counts in both, as in the official script);
* ``per_combination["ocr_math"]`` the same over questions with exactly that tag set;
* ``per_sample_total[k] = 100 * mean_q grade_{q,k}``: one total per judge run, to see the spread.

Departure from the reference grader: it scores a reply it cannot parse after five tries as 0.0.
Here a question with no parsed sample is ``unknown``: left out of every mean, counted per
capability, listed in the details, and bracketed by ``total_bounds`` (unknown as 0 / as 1).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from bpo.errors import BpoError, RecordError
from bpo.eval.judging import GradeRequest, mean
from bpo.eval.report import format_table
from bpo.io import read_json

TEMPLATE = "mmvet_grade_v1"
FIELDS = ("answer", "ground_truth", "question")
# The official tags, in the order MM-Vet's leaderboard lists them.
CAPABILITIES = {"rec": "recognition", "ocr": "OCR", "know": "knowledge", "gen": "language generation",
                "spat": "spatial awareness", "math": "math"}


@dataclass
class MMVetQuestion:
    id: str
    image: str
    capabilities: list[str]
    question: str
    answer: str


def load_mmvet(path: str | os.PathLike) -> dict[str, MMVetQuestion]:
    """Read ``mm-vet.json``; errors name the file and question id and say what to fix."""
    data = read_json(path, "file")
    if not isinstance(data, dict) or not data:
        raise BpoError(f"{path}: expected MM-Vet's mm-vet.json, a JSON object {{question id: {{imagename, "
                       "capability, question, answer}}}}")
    out = {}
    for qid, q in data.items():
        if not isinstance(q, dict):
            raise RecordError("expected an object {imagename, capability, question, answer}", where=str(path),
                              record_id=qid)
        for key in ("imagename", "question", "answer"):
            if not isinstance(q.get(key), str) or not q[key].strip():
                raise RecordError(f"missing or empty '{key}'", where=str(path), record_id=qid)
        caps = q.get("capability")
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c for c in caps):
            raise RecordError("'capability' must be a non-empty list of tags (rec, ocr, know, gen, spat, math)",
                              where=str(path), record_id=qid)
        out[str(qid)] = MMVetQuestion(str(qid), q["imagename"], list(dict.fromkeys(caps)), q["question"],
                                      q["answer"])
    return out


def mmvet_records(questions: dict[str, MMVetQuestion], image_prefix: str = "") -> list[dict]:
    """Eval records for ``bpo generate``: the image and the question as asked, nothing added."""
    return [{"id": q.id, "images": [image_prefix + q.image],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}],
             "chosen": q.answer, "meta": {"capability": q.capabilities, "benchmark": "mm-vet"}}
            for q in questions.values()]


_SCORE_RE = re.compile(r"SCORE: ([01](?:\.\d+)?)")


def parse_score(reply: str) -> float | None:
    """The grade when the stripped reply is exactly ``SCORE: x`` with 0 <= x <= 1, else ``None``."""
    m = _SCORE_RE.fullmatch(reply.strip())
    if not m:
        return None
    value = float(m.group(1))
    return value if 0.0 <= value <= 1.0 else None


def ground_truth_for_judge(answer: str) -> str:
    """Space out ``<AND>``/``<OR>`` so the judge reads them as operators (as the official script does)."""
    return re.sub(r"\s*<(AND|OR)>\s*", r" <\1> ", answer).strip()


def question_score(samples: list[float | None]) -> float | None:
    """Mean of the parsed samples; ``None`` (unknown) when none parsed."""
    return mean(v for v in samples if v is not None)


def _group(scores: list[float | None]) -> dict:
    known = [s for s in scores if s is not None]
    return {"score": None if not known else 100 * sum(known) / len(known), "n": len(scores),
            "graded": len(known), "unknown": len(scores) - len(known)}


def capability_order(tags) -> list[str]:
    return [c for c in CAPABILITIES if c in tags] + sorted(t for t in tags if t not in CAPABILITIES)


def mmvet_metrics(items: list[tuple[list[str], list[float | None]]]) -> dict:
    """Scores in percent from ``(capability tags, per-sample grades)`` per question (see module doc)."""
    if not items:
        raise BpoError("MM-Vet needs at least one graded question")
    scores = [question_score(s) for _, s in items]
    n_samples = max(len(s) for _, s in items)
    total = _group(scores)
    known_sum = sum(s for s in scores if s is not None)
    n = len(items)
    metrics: dict = {"total": total["score"], "n": n, "graded": total["graded"], "unknown": total["unknown"],
                     "total_bounds": [100 * known_sum / n, 100 * (known_sum + total["unknown"]) / n]}
    tags = {c for caps, _ in items for c in caps}
    metrics["per_capability"] = {
        c: _group([s for (caps, _), s in zip(items, scores) if c in caps]) for c in capability_order(tags)}
    combos: dict[str, list[float | None]] = {}
    for (caps, _), s in zip(items, scores):
        combos.setdefault("_".join(capability_order(caps)), []).append(s)
    metrics["per_combination"] = {k: _group(v) for k, v in sorted(combos.items())}
    metrics["samples"] = n_samples
    metrics["per_sample_total"] = [
        None if (m := mean(s[k] for _, s in items if k < len(s) and s[k] is not None)) is None else 100 * m
        for k in range(n_samples)]
    metrics["unknown_samples"] = sum(v is None for _, s in items for v in s)
    return metrics


def summary(metrics: dict) -> str:
    rows = [[f"{c} ({CAPABILITIES.get(c, 'custom tag')})", m["score"], m["n"], m["unknown"]]
            for c, m in metrics["per_capability"].items()]
    rows.append(["total", metrics["total"], metrics["n"], metrics["unknown"]])
    return format_table(["MM-Vet", "score %", "n", "unknown"], rows)


def grade_requests(joined) -> list[GradeRequest]:
    return [GradeRequest(qid, {"question": q.question, "ground_truth": ground_truth_for_judge(q.answer),
                               "answer": row["response"]}) for qid, row, q in joined]

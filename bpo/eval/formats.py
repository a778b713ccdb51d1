"""Benchmarks' own answer files, read as ``bpo generate`` rows ``{id, response, prompt, meta}``.

A protocol can be scored from answers made with the benchmark's own scripts, not only from ``bpo
generate``:

* **RLHF-V / LLaVA answer files** (``muffin_vqa.py``, ``model_vqa.py``): JSONL rows
  ``{"question_id", "image_id"?, "prompt", "text", "model_id"}``. The id is the ``image_id`` (a COCO id,
  as Object HalBench needs) or else the ``question_id``; the response is ``text`` with a leading
  "Assistant:" removed, as RLHF-V's scorer does.
* **AMBER**'s ``[{"id", "response"}]`` lists: :func:`bpo.eval.amber.load_amber_responses`.
* **VLGuard**'s result files ``{image path: answer}`` (one per split): :func:`bpo.eval.vlguard.load_result_file`.

Such files carry no token budget: state it with ``--max-new-tokens`` so the protocol block records it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bpo.errors import BpoError, RecordError
from bpo.eval.inputs import load_responses
from bpo.io import read_json, read_jsonl


def json_objects(path: str | os.PathLike, what: str, expect: str, shape: str,
                 ok: Callable[[dict], bool]) -> list[tuple[str, dict]]:
    """``[(where, object)]`` of a benchmark's JSON list file (``where`` = ``path[i]``); a file that is not a list
    says ``expect``, an item that is not an object passing ``ok`` says ``shape``, both naming the place."""
    data = read_json(path, what)
    if not isinstance(data, list):
        raise BpoError(f"{path}: expected {expect}")
    out = []
    for i, obj in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(obj, dict) or not ok(obj):
            raise RecordError(f"expected {shape}", where=where)
        out.append((where, obj))
    return out


def is_answer_row(obj: dict) -> bool:
    """An RLHF-V / LLaVA answer row: ``text`` and a question or image id, and no bpo ``response``."""
    return "response" not in obj and isinstance(obj.get("text"), str) and (
        "image_id" in obj or "question_id" in obj)


def load_responses_any(path: str | os.PathLike) -> dict[str, dict]:
    """``bpo generate`` rows, or an RLHF-V / LLaVA answer file converted to them."""
    first = next((obj for _, obj in read_jsonl(path)), None) if str(path).endswith(".jsonl") else None
    if first is None or not is_answer_row(first):
        return load_responses(path)
    rows: dict[str, dict] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not is_answer_row(obj):
            raise RecordError("expected an answer row {question_id, image_id, prompt, text} like the first one",
                              where=where)
        key = obj.get("image_id", obj.get("question_id"))
        rid = str(key)
        if rid in rows:
            raise RecordError("duplicate image_id / question_id; keep one answer per image", where=where,
                              record_id=rid)
        text = obj["text"].strip()
        if text.startswith("Assistant:"):
            text = text[len("Assistant:"):].strip()
        meta = {"image_id": key} if "image_id" in obj else {}
        rows[rid] = {"id": rid, "response": text, "prompt": obj.get("prompt"), "meta": meta, "_where": where}
    if not rows:
        raise BpoError(f"{path}: no responses in the file")
    return rows

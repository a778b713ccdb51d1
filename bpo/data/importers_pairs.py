"""Importers for preference sets published as pairs: POVID and openbmb/RLAIF-V-Dataset.

Registered lazily in :data:`bpo.data.importers.IMPORTERS` (by name, so nothing imports round); they reuse
its LLaVA-turn parsing, id and image helpers. Formats: docs/data.md.
"""

from __future__ import annotations

from typing import Any

from bpo.data.importers import (
    ImportOptions,
    _extra_meta,
    _image_list,
    _llava_turns,
    finish,
    row_id,
    strip_markers,
)
from bpo.data.records import Record, message_text
from bpo.errors import RecordError


# ---- povid --------------------------------------------------------------------------------------
def import_povid(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """A POVID-style row: LLaVA ``conversations`` (chosen) + ``rejected_conversations`` (same turns, the
    last gpt answer dispreferred). The rejected answers were made by hallucination injection (source
    ``injected``)."""
    rid = row_id(row, where)
    turns, images = _llava_turns(row, where, rid, opts)
    rejected_row = {"conversations": row.get("rejected_conversations"), "image": row.get("image")}
    try:
        rturns, _ = _llava_turns(rejected_row, where, rid, opts)
    except RecordError as exc:
        raise RecordError(f"rejected_conversations: {exc.reason}", where=where, record_id=rid) from None
    last = len(turns) - 1
    if turns[last]["role"] != "assistant" or last == 0 or rturns[-1]["role"] != "assistant":
        raise RecordError("conversations and rejected_conversations must both end with a gpt answer",
                          where=where, record_id=rid)
    if [message_text(t) for t in rturns[:-1]] != [message_text(t) for t in turns[:-1]]:
        raise RecordError("rejected_conversations must repeat the conversation's turns up to its last answer",
                          where=where, record_id=rid)
    meta = _extra_meta(row, {"id", "image", "conversations", "rejected_conversations"})
    return finish({"id": rid, "images": images, "prompt": turns[:last], "chosen": turns[last]["content"],
                   "rejected": [{"text": rturns[-1]["content"], "source": "injected", "meta": {"from": "povid"}}],
                   "meta": meta}, where)


# ---- rlaif_v ------------------------------------------------------------------------------------
_RLAIF_KNOWN = {"question", "chosen", "rejected", "image", "image_path", "idx"}


def import_rlaif_v(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """An openbmb/RLAIF-V-Dataset row (``question``, ``chosen``, ``rejected``, ``image`` {bytes, path},
    ``image_path``, ``idx``, ``ds_name``, ``origin_*``). Both answers are model outputs ranked by AI
    feedback, so the negative's source is ``rlaif``."""
    rid = str(row["idx"]) if row.get("idx") not in (None, "") else row_id(row, where)
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RecordError("missing 'question' string", where=where, record_id=rid)
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes") is None and not image.get("path"):
        image = None
    if image is None and isinstance(row.get("image_path"), str):
        image = row["image_path"]
    images = _image_list(image, where, rid, opts) if image is not None else []
    text = strip_markers(question)
    content: Any = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}] if images else text
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise RecordError(f"missing or empty '{key}' string", where=where, record_id=rid)
    meta = _extra_meta(row, _RLAIF_KNOWN | {"id"})
    return finish({"id": rid, "images": images, "prompt": [{"role": "user", "content": content}],
                   "chosen": row["chosen"], "rejected": [{"text": row["rejected"], "source": "rlaif"}],
                   "meta": meta}, where)

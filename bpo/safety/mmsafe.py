"""The flat MMSafe-PO row format, to and from bpo records.

MMSafe-PO (Li et al. 2025) stores a conversation as one string::

    USER: <turn 1> ASSISTANT: <reply 1> USER: <image>\\n<rewritten last turn> ASSISTANT:

with ``chosen``/``rejected`` prefixed ``"ASSISTANT: "`` and the construction fields (``entity``,
``entity_type``, ``replacement``, ``text_prompt``, ``mid_prompt``, ``type``) beside them. Our records
keep the same information structured: chat messages, ``images``, and ``meta`` where ``text_prompt`` /
``mid_prompt`` hold only the *last user turn* (the history is already in ``prompt``). The exporter
expands them back to full flat conversations, as in the released files.

Turn text is stripped on import, and a literal ``USER:``/``ASSISTANT:`` after a space inside a turn
would read as a turn break: the flat format cannot tell them apart.
"""

from __future__ import annotations

import re

from bpo.data.records import Message, Negative, Record, message_text, user_turn
from bpo.errors import BpoError, RecordError

META_FIELDS = ("type", "entity", "entity_type", "replacement")
_MARKER = re.compile(r"(?:(?<=\s)|^)(USER|ASSISTANT):")
_PREFIX = "ASSISTANT: "
_IMAGE = "<image>\n"


def flatten(messages: list[Message], *, images: bool = True) -> str:
    """``USER: ... ASSISTANT: ... USER: <image>\\n... ASSISTANT:``; ``images=False`` drops ``<image>``."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            raise BpoError("the MMSafe-PO format has no system turn; drop it before exporting")
        text = message_text(m)
        if m["role"] == "user":
            n = sum(1 for p in m["content"] if p.get("type") == "image") if isinstance(m["content"], list) else 0
            parts.append("USER: " + (_IMAGE * n if images else "") + text)
        else:
            parts.append("ASSISTANT: " + text)
    return " ".join(parts) + " ASSISTANT:"


def unflatten(flat: str) -> list[Message]:
    """Inverse of :func:`flatten` (``<image>`` at the start of a user turn becomes an image part)."""
    marks = list(_MARKER.finditer(flat))
    if not marks or flat[: marks[0].start()].strip():
        raise ValueError("not a 'USER: ... ASSISTANT:' conversation")
    messages: list[Message] = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(flat)
        text = flat[m.end():end].strip(" ")
        if m.group(1) == "USER":
            n = 0
            while text.startswith("<image>"):
                text, n = text[len("<image>"):].lstrip("\n").lstrip(" "), n + 1
            messages.append(user_turn(text.strip(), n))
        else:
            messages.append({"role": "assistant", "content": text.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the trailing "ASSISTANT:" cue for the response
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the conversation must end with a USER turn followed by 'ASSISTANT:'")
    return messages


def _with_last_turn(prompt: list[Message], text: str) -> list[Message]:
    return [*prompt[:-1], {"role": "user", "content": text}]


def to_mmsafe_po(record: Record, *, prompt_key: str = "question") -> dict:
    """A record as a flat MMSafe-PO row (``prompt_key``: ``question`` as on GitHub, ``prompt`` as on HF)."""
    human = [n for n in record.rejected if n.source == "human"] or record.rejected
    if not human:
        raise BpoError(f"record {record.id!r} has no rejected response to export")
    row: dict = {"id": record.id, prompt_key: flatten(record.prompt)}
    if record.images:
        row["image"] = record.images[0]
    row["chosen"] = _PREFIX + record.chosen
    row["rejected"] = _PREFIX + human[0].text
    for key in META_FIELDS:
        if key in record.meta:
            row[key] = record.meta[key]
    for key in ("text_prompt", "mid_prompt"):
        if key in record.meta:
            flat = record.meta.get(f"{key}_flat")
            if isinstance(flat, str) and _last_user_text(flat) == record.meta[key]:
                row[key] = flat  # imported from a released file and unchanged since: give it back verbatim
            else:
                row[key] = flatten(_with_last_turn(record.prompt, record.meta[key]), images=False)
    return row


def _last_user_text(flat: str) -> str | None:
    try:
        return message_text(unflatten(flat)[-1])
    except ValueError:
        return None


def _strip_prefix(text: str) -> str:
    return text[len(_PREFIX):] if text.startswith(_PREFIX) else text.removeprefix("ASSISTANT:").strip()


def from_mmsafe_po(row: dict, *, where: str | None = None) -> Record:
    """A flat MMSafe-PO row (ours or the released files) as a record; ``RecordError`` if malformed."""
    rid = str(row.get("id", ""))
    flat = row.get("question", row.get("prompt"))
    try:
        if not isinstance(flat, str):
            raise ValueError("missing 'question' (or 'prompt') string")
        prompt = unflatten(flat)
        meta = {k: row[k] for k in META_FIELDS if k in row}
        for key in ("text_prompt", "mid_prompt"):
            if isinstance(row.get(key), str):
                meta[key] = message_text(unflatten(row[key])[-1])
    except ValueError as exc:
        raise RecordError(str(exc), where=where, record_id=rid or None) from None
    d = {"id": rid, "prompt": prompt, "chosen": _strip_prefix(str(row.get("chosen", ""))),
         "rejected": [Negative(_strip_prefix(str(row.get("rejected", ""))), "human").to_dict()],
         "images": [row["image"]] if row.get("image") else [], "meta": meta}
    return Record.from_dict(d, where=where)

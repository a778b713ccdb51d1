"""Read text-only preference pairs: Anthropic HH-RLHF strings or generic ``{prompt, chosen, rejected}`` rows.

HH-RLHF stores each side of a pair as one string of turns::

    "\\n\\nHuman: Who runs Acme?\\n\\nAssistant: ...\\n\\nHuman: And Zorb?\\n\\nAssistant: <final answer>"

``chosen`` and ``rejected`` repeat the same history and differ in the final Assistant turn. We split
both into chat messages, check that everything before the final Assistant turn is identical, and keep
that shared part as the prompt (it must end with a user turn).

Whitespace rules (the public files are not uniform): CRLF is normalised to LF; a role marker counts
at the start of the string or after a blank line (``\\n\\nHuman:``, also ``\\n \\nHuman:``); turn
text is stripped; two consecutive turns of the same role are merged with a blank line (the split
undid a paragraph break, not a real turn change). An empty history turn is kept as ``""`` so the
history stays verbatim; an empty final user turn or an empty response is an error.

Generic rows: ``prompt`` is a string (one user turn, or an HH-style ``Human:/Assistant:`` string
ending in an empty ``Assistant:``) or a list of ``{role, content}`` messages; ``chosen``/``rejected``
are strings (or one-message assistant lists, the TRL conversational format).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bpo.data.records import ROLES, Message, message_text, parse_unique
from bpo.errors import BpoError, RecordError
from bpo.io import read_json_or_jsonl, read_jsonl

# A role marker at the start of the text or after a blank line (spaces/tabs allowed on that line).
_MARKER = re.compile(r"(?:\A\s*|\n[ \t]*\n\s*)(Human|Assistant)[ \t]*:")
_ROLE = {"Human": "user", "Assistant": "assistant"}


@dataclass
class TextPair:
    """One text-only preference pair: the prompt messages and the two final responses."""

    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    where: str = "?"
    extra: dict = field(default_factory=dict)  # the row's other columns (e.g. ``entity`` for the column backend)

    def last_user_text(self) -> str:
        return message_text(self.prompt[-1])


def split_turns(text: str) -> list[Message]:
    """Split an HH string into ``[{role, content}]``; raises ``ValueError`` if there is no role marker
    or text precedes the first one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    matches = list(_MARKER.finditer(text))
    if not matches:
        raise ValueError("no 'Human:' or 'Assistant:' turn marker found")
    if text[: matches[0].start()].strip():
        raise ValueError("text before the first 'Human:'/'Assistant:' marker")
    messages: list[Message] = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        role = _ROLE[m.group(1)]
        content = text[m.end():end].strip()
        if messages and messages[-1]["role"] == role:
            # Two Human turns in a row (a collection glitch in a few HH rows): one turn, two paragraphs.
            prev = messages[-1]["content"]
            messages[-1]["content"] = f"{prev}\n\n{content}" if prev and content else prev or content
            continue
        messages.append({"role": role, "content": content})
    return messages


def _response(value, side: str) -> str:
    """A response given as a string or as a one-message assistant list (TRL conversational format)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role", "assistant") != "assistant":
            raise ValueError(f"'{side}' message must have role 'assistant'")
        if not isinstance(value[0].get("content"), (str, list)):
            raise ValueError(f"'{side}' message needs a 'content' string or list of parts")
        value = message_text(value[0])
    if not isinstance(value, str):
        raise ValueError(f"'{side}' must be a string")
    value = value.replace("\r\n", "\n").strip()
    if not value:
        raise ValueError(f"empty '{side}' response")
    return value


def _check_prompt(prompt: list[Message]) -> None:
    if not any(m["role"] == "user" for m in prompt):
        raise ValueError("no Human (user) turn in the prompt")
    if prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a Human (user) turn")
    if not message_text(prompt[-1]).strip():
        raise ValueError("the last Human turn is empty")


def parse_hh(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """``(prompt, chosen_response, rejected_response)`` from two HH strings; ``ValueError`` if malformed."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise ValueError("'chosen' and 'rejected' must be strings")
    c_turns, r_turns = split_turns(chosen), split_turns(rejected)
    for side, turns in (("chosen", c_turns), ("rejected", r_turns)):
        if turns[-1]["role"] != "assistant":
            raise ValueError(f"'{side}' does not end with an Assistant turn")
    prompt, r_prompt = c_turns[:-1], r_turns[:-1]
    if prompt != r_prompt:
        k = next((i for i, (a, b) in enumerate(zip(prompt, r_prompt)) if a != b), min(len(prompt), len(r_prompt)))
        raise ValueError(f"chosen and rejected do not share the history (first difference at turn {k + 1}); "
                         "only the final Assistant turn may differ")
    if not prompt:
        raise ValueError("no Human (user) turn before the final Assistant turn")
    _check_prompt(prompt)
    return prompt, _response(c_turns[-1]["content"], "chosen"), _response(r_turns[-1]["content"], "rejected")


def _generic_prompt(value) -> list[Message]:
    if isinstance(value, str):
        if _MARKER.match(value.replace("\r\n", "\n")):
            turns = split_turns(value)
            # HH-style prompt strings end with an empty "Assistant:" cue for the response.
            if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
                turns = turns[:-1]
            return turns
        return [{"role": "user", "content": value.replace("\r\n", "\n").strip()}]
    if not isinstance(value, list) or not value:
        raise ValueError("'prompt' must be a string or a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"prompt[{i}] needs a 'role' in {ROLES}")
        if not isinstance(m.get("content"), (str, list)):
            raise ValueError(f"prompt[{i}].content must be a string or a list of parts")
        if isinstance(m["content"], list) and any(isinstance(p, dict) and p.get("type") == "image"
                                                  for p in m["content"]):
            raise ValueError(f"prompt[{i}] has an image part; the input pairs must be text-only")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def parse_row(row: dict, *, where: str, default_id: str) -> TextPair:
    """One input row -> :class:`TextPair`; raises :class:`RecordError` naming ``where`` on bad input."""
    rid = str(row.get("id", default_id))
    try:
        if "prompt" in row and row["prompt"] not in (None, "", []):
            prompt = _generic_prompt(row["prompt"])
            _check_prompt(prompt)
            chosen = _response(row.get("chosen"), "chosen")
            rejected = _response(row.get("rejected"), "rejected")
        else:
            prompt, chosen, rejected = parse_hh(row.get("chosen"), row.get("rejected"))
    except ValueError as exc:
        raise RecordError(f"{exc}; fix the row or run with --on-error skip", where=where, record_id=rid) from None
    extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "chosen", "rejected")}
    return TextPair(id=rid, prompt=prompt, chosen=chosen, rejected=rejected, where=where, extra=extra)


def read_pairs(path: str | os.PathLike, *, on_error: str = "raise", errors: list | None = None,
               id_prefix: str | None = None) -> Iterator[TextPair]:
    """Yield pairs from a JSONL, ``.jsonl.gz`` or ``.json`` (list) file.

    Rows without an ``id`` get ``<id_prefix><line>`` (default prefix: the file name up to its first dot,
    and ``-``: ``train.jsonl.gz`` -> ``train-12``), so ids are stable for a given file and the phrase
    choice seeded by id is reproducible.
    """
    if on_error not in ("raise", "skip"):
        raise BpoError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    prefix = f"{path.name.split('.')[0]}-" if id_prefix is None else id_prefix
    skip = on_error == "skip"
    # bpo.io reads .gz transparently and tells a JSON list from JSON Lines by content.
    rows = read_json_or_jsonl(path) if path.suffix == ".json" else read_jsonl(path, skip_bad=skip, errors=errors)
    yield from parse_unique(rows, lambda row, where, lineno: parse_row(row, where=where, default_id=f"{prefix}{lineno}"),
                            path, skip=skip, errors=errors)

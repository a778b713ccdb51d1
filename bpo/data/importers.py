"""Convert foreign preference / SFT formats into bpo :class:`~bpo.data.records.Record` s.

Each importer is a per-row function ``(row, where, *, opts=None) -> Record`` registered in
:data:`IMPORTERS`; ``where`` is ``file:N`` (JSONL line, or 1-based row index for ``.json`` lists and
``.parquet``) and is used both in error messages and for the fallback id ``<file stem>-<N>``.
The only side effect an importer may have is writing embedded image bytes through
``opts.images`` (an :class:`ImageSink`), which names files by content hash, so re-running an import
is idempotent.

Formats (see docs/data.md for before/after examples):

- ``bpo``: already in our schema (checked and normalised).
- ``trl``: TRL / HF preference rows, plain strings or conversational messages.
- ``bootstrapped_po``: ``{prompt, image, completions: [{score, response, type}]}`` (Pi et al.).
- ``mmsafe_po``: MMSafe-PO rows with a flat ``USER: ... ASSISTANT:`` conversation (Li et al.).
- ``llava_sft``: LLaVA ``{image, conversations: [{from, value}]}`` -> chosen-only records.
- ``povid``: POVID ``{image, conversations, rejected_conversations}`` -> one pair per row.
- ``rlaif_v``: openbmb/RLAIF-V-Dataset ``{question, chosen, rejected, image, idx, ...}``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpo.data.records import Record, message_text
from bpo.errors import BpoError, RecordError
from bpo.io import _check_readable, atomic_write, read_json_or_jsonl, read_jsonl
from bpo.registry import Registry

IMPORTERS = Registry("import format")
# POVID and RLAIF-V rows live in their own module, which reuses the helpers below; registered lazily so the
# two modules do not import each other.
IMPORTERS.register("povid", "bpo.data.importers_pairs:import_povid")
IMPORTERS.register("rlaif_v", "bpo.data.importers_pairs:import_rlaif_v")
IMAGE_MARKER = "<image>"
# Bootstrapped-PO completion types -> our negative sources (methods.md §1.2-1.4).
BOOTSTRAPPED_SOURCES = {"mllm-hal": "weakened", "llm-hal": "injected"}
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


# ---- options and embedded images --------------------------------------------------------------
class ImageSink:
    """Writes embedded images to ``out_dir/<sha256[:16]>.<ext>`` and returns ``prefix + name``.

    The returned path is relative to ``out_dir`` (plus an optional ``prefix`` when ``out_dir`` is a
    sub-folder of a wider image root), so ``out_dir`` is the ``--image-root`` for the imported file.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str = ""):
        self.out_dir = Path(out_dir)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.written = 0
        self.reused = 0

    def add(self, data: bytes, hint_name: str | None = None) -> str:
        ext = _image_ext(data, hint_name)
        name = hashlib.sha256(data).hexdigest()[:16] + ext
        target = self.out_dir / name
        if target.exists():
            self.reused += 1
        else:
            with atomic_write(target, "wb") as fh:
                fh.write(data)
            self.written += 1
        return self.prefix + name


def _image_ext(data: bytes, hint_name: str | None) -> str:
    if hint_name and Path(hint_name).suffix.lower() in _IMAGE_EXTS:
        return Path(hint_name).suffix.lower()
    magic = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg", b"GIF8": ".gif", b"BM": ".bmp"}
    for head, ext in magic.items():
        if data.startswith(head):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


@dataclass
class ImportOptions:
    images: ImageSink | None = None
    extra: dict = field(default_factory=dict)  # reserved for user-registered importers


_DEFAULT_OPTS = ImportOptions()


def image_ref(value: Any, where: str, rid: str | None, opts: ImportOptions | None) -> str | None:
    """Turn one image value into a relative path (``None`` = no image).

    Accepts a path string, a ``data:image/...;base64,`` URI, raw bytes, an HF datasets image dict
    ``{"bytes": ..., "path": ...}`` or a PIL image. Bytes are written through ``opts.images``.
    """
    if value is None or value == "":
        return None
    hint = None
    if isinstance(value, dict):
        hint = value.get("path") if isinstance(value.get("path"), str) else None
        if value.get("bytes") is None:
            if hint:
                return hint
            raise RecordError("image dict has neither 'bytes' nor 'path'", where=where, record_id=rid)
        value = value["bytes"]
    if isinstance(value, str):
        if not value.startswith("data:image"):
            return value
        try:
            value = base64.b64decode(value.split(",", 1)[1], validate=True)
        except (IndexError, ValueError):
            raise RecordError("malformed base64 data URI for the image", where=where, record_id=rid) from None
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image (datasets' decoded Image feature)
        import io

        buf = io.BytesIO()
        value.save(buf, format=getattr(value, "format", None) or "PNG")
        hint = hint or ("x." + (getattr(value, "format", None) or "png").lower())
        value = buf.getvalue()
    if not isinstance(value, (bytes, bytearray)):
        raise RecordError(f"unsupported image value of type {type(value).__name__}", where=where, record_id=rid)
    sink = (opts or _DEFAULT_OPTS).images
    if sink is None:
        raise RecordError("the row embeds image bytes; pass --image-out DIR to write them to files",
                          where=where, record_id=rid)
    return sink.add(bytes(value), hint)


def _image_list(value: Any, where: str, rid: str | None, opts: ImportOptions | None) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    refs = [image_ref(v, where, rid, opts) for v in items]
    return [r for r in refs if r is not None]


# ---- shared helpers ---------------------------------------------------------------------------
def default_id(where: str) -> str:
    """``path/to/file.jsonl:12`` -> ``file-12`` (stable across re-imports of the same file)."""
    path, _, n = where.rpartition(":")
    return f"{Path(path).stem}-{n}" if path and n.isdigit() else where


def row_id(row: dict, where: str) -> str:
    rid = row.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        return default_id(where)
    return str(rid)


def split_markers(text: str, marker: str = IMAGE_MARKER) -> list[dict]:
    """Text with ``<image>`` markers -> HF parts, an image part where each marker was.

    Whitespace next to a marker is dropped (``"<image>\\nWhat is it?"`` -> image, "What is it?").
    """
    parts: list[dict] = []
    pieces = text.split(marker)
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image"})
        piece = piece.strip()
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def strip_markers(text: str, marker: str = IMAGE_MARKER) -> str:
    return " ".join(p.strip() for p in text.split(marker) if p.strip())


def _text_turn(role: str, text: str) -> dict:
    return {"role": role, "content": text}


def _extra_meta(row: dict, known: set[str]) -> dict:
    """Keep unknown JSON-serialisable scalar columns (e.g. ``split``, ``category``) in ``meta``."""
    out = {}
    for k, v in row.items():
        if k in known or v is None:
            continue
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
    return out


def finish(d: dict, where: str) -> Record:
    """Round-trip through :meth:`Record.from_dict` so every importer's output passes the schema."""
    return Record.from_dict(d, where=where)


# ---- trl ------------------------------------------------------------------------------------
_TRL_KNOWN = {"id", "prompt", "chosen", "rejected", "images", "image", "meta"}


def _norm_parts(content: Any, where: str, rid: str, images_out: list) -> str | list[dict]:
    """HF content (string or parts) -> our parts; keeps only type/text (datasets adds None keys)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordError("message content must be a string or a list of parts", where=where, record_id=rid)
    parts = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": p.get("text") or ""})
        elif kind == "image":
            parts.append({"type": "image"})
            inline = p.get("image") or p.get("path") or p.get("url")
            if inline is not None:
                images_out.append(inline)
        else:
            raise RecordError(f"unknown content part {p!r}; expected type 'text' or 'image'",
                              where=where, record_id=rid)
    return parts


def _trl_response(value: Any, name: str, where: str, rid: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        msg = value[0]
        if msg.get("role") != "assistant":
            raise RecordError(f"'{name}' message must have role 'assistant', not {msg.get('role')!r}",
                              where=where, record_id=rid)
        content = msg.get("content")
        if isinstance(content, list):
            return message_text({"content": content})
        if isinstance(content, str):
            return content
    raise RecordError(f"'{name}' must be a string or a list with exactly one assistant message",
                      where=where, record_id=rid)


def _split_implicit_prompt(row: dict, where: str, rid: str) -> tuple[list, list, list]:
    """TRL's implicit-prompt form: chosen/rejected are full conversations sharing a prefix."""
    ch, rj = row.get("chosen"), row.get("rejected")
    if not (isinstance(ch, list) and isinstance(rj, list)):
        raise RecordError("missing 'prompt' (and chosen/rejected are not full conversations)",
                          where=where, record_id=rid)
    n = 0
    while n < min(len(ch), len(rj)) - 1 and ch[n] == rj[n]:
        n += 1
    return ch[:n], ch[n:], rj[n:]


@IMPORTERS.register("trl")
def import_trl(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """A TRL/HF preference row (standard or conversational, with optional ``images``/``image``)."""
    rid = row_id(row, where)
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    if prompt is None:
        prompt, chosen, rejected = _split_implicit_prompt(row, where, rid)
    raw_images = row.get("images") if row.get("images") is not None else row.get("image")
    inline: list = []
    if isinstance(prompt, str):
        n_markers = prompt.count(IMAGE_MARKER)
        images = _image_list(raw_images, where, rid, opts) if raw_images is not None else []
        if n_markers and n_markers != len(images):
            raise RecordError(f"prompt has {n_markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s)",
                              where=where, record_id=rid)
        # LLaVA convention: image parts before the text of the user turn.
        text = strip_markers(prompt) if n_markers else prompt
        content: Any = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}] if images else text
        messages = [{"role": "user", "content": content}]
    elif isinstance(prompt, list) and prompt:
        messages = []
        for m in prompt:
            if not isinstance(m, dict) or "role" not in m:
                raise RecordError("prompt messages need 'role' and 'content'", where=where, record_id=rid)
            messages.append({"role": m["role"], "content": _norm_parts(m.get("content"), where, rid, inline)})
        images = _image_list(raw_images, where, rid, opts) if raw_images is not None else []
        if not images and inline:
            images = _image_list(inline, where, rid, opts)
        _place_images_in_first_user_turn(messages, len(images))
    else:
        raise RecordError("'prompt' must be a non-empty string or list of messages", where=where, record_id=rid)
    if rejected is None:
        raise RecordError("missing 'rejected'", where=where, record_id=rid)
    src = row.get("source") if isinstance(row.get("source"), str) and row.get("source") else "human"
    meta = dict(row["meta"]) if isinstance(row.get("meta"), dict) else {}
    meta |= _extra_meta(row, _TRL_KNOWN | {"source"})
    return finish({"id": rid, "images": images, "prompt": messages,
                   "chosen": _trl_response(chosen, "chosen", where, rid),
                   "rejected": [{"text": _trl_response(rejected, "rejected", where, rid), "source": src}],
                   "meta": meta}, where)


def _place_images_in_first_user_turn(messages: list[dict], n_images: int) -> None:
    """Text-only conversational prompt + images: put the image parts first in the first user turn
    (what TRL's multimodal preparation does)."""
    n_parts = sum(1 for m in messages if isinstance(m["content"], list)
                  for p in m["content"] if p["type"] == "image")
    if n_parts or not n_images:
        return
    for m in messages:
        if m["role"] == "user":
            c = m["content"]
            text_parts = [{"type": "text", "text": c}] if isinstance(c, str) else c
            m["content"] = [{"type": "image"} for _ in range(n_images)] + text_parts
            return


# ---- bootstrapped_po ----------------------------------------------------------------------------
@IMPORTERS.register("bootstrapped_po")
def import_bootstrapped_po(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """A Bootstrapped-PO row: the top-score completion is chosen, every lower one a negative.

    Upstream pairs every two completions with different scores; with one chosen per record we keep
    the top-score one (``type == "gt"`` wins a tie at the top, otherwise a tie is an error) and turn
    each lower-scored completion into a :class:`Negative`. Every ``<image>`` marker is stripped from
    the prompt and exactly one image part is added (the upstream loader added a second one).
    """
    rid = row_id(row, where)
    comps = row.get("completions")
    if not isinstance(comps, list) or not comps:
        raise RecordError("'completions' must be a non-empty list of {score, response, type}",
                          where=where, record_id=rid)
    for j, c in enumerate(comps):
        if not isinstance(c, dict) or not isinstance(c.get("score"), (int, float)) or isinstance(
                c.get("score"), bool) or not isinstance(c.get("response"), str):
            raise RecordError(f"completions[{j}] needs a numeric 'score' and a 'response' string",
                              where=where, record_id=rid)
    top = max(c["score"] for c in comps)
    if all(c["score"] == top for c in comps):
        raise RecordError(f"all {len(comps)} completion(s) have score {top}: no preference pair "
                          "(need one top-score answer and at least one lower-scored one)",
                          where=where, record_id=rid)
    best = [c for c in comps if c["score"] == top]
    if len(best) > 1:
        gts = [c for c in best if c.get("type") == "gt"]
        if len(gts) != 1:
            raise RecordError(f"{len(best)} completions share the top score {top}; keep one (or mark it "
                              "type 'gt')", where=where, record_id=rid)
        best = gts
    chosen = best[0]
    negatives = _lower_negatives(comps, top)
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise RecordError("'prompt' must be a string", where=where, record_id=rid)
    text = strip_markers(prompt)
    images = _image_list(row.get("image"), where, rid, opts) if row.get("image") is not None else []
    content: Any = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}] if images else text
    extra = _extra_meta(row, {"id", "prompt", "image", "completions"})
    prompt_msgs = [{"role": "user", "content": content}]
    first = finish({"id": rid, "images": images, "prompt": prompt_msgs, "chosen": chosen["response"],
                    "rejected": negatives, "meta": {"chosen_type": chosen.get("type", "gt")} | extra}, where)
    # Upstream pairs every two completions with different scores: a middle-score completion is also the
    # preferred side against each lower one. Each such completion becomes one more record (id <id>-c<j>).
    more = []
    for j, c in enumerate(comps):
        lower = _lower_negatives(comps, c["score"])
        if c["score"] == top or not lower:
            continue
        more.append(finish({"id": f"{rid}-c{j}", "images": list(images), "prompt": copy.deepcopy(prompt_msgs),
                            "chosen": c["response"], "rejected": lower,
                            "meta": {"chosen_type": c.get("type") or "unknown", "chosen_score": c["score"],
                                     "pairs_of": rid} | extra}, where))
    return [first, *more] if more else first


def _lower_negatives(comps: list[dict], score: float) -> list[dict]:
    """Every completion scored below ``score`` as a negative (source from its Bootstrapped-PO type)."""
    out = []
    for c in comps:
        if c["score"] >= score:
            continue
        ctype = c.get("type") if isinstance(c.get("type"), str) and c.get("type") else "unknown"
        out.append({"text": c["response"], "source": BOOTSTRAPPED_SOURCES.get(ctype, ctype),
                    "meta": {"type": ctype, "score": c["score"]}})
    return out


# ---- mmsafe_po ----------------------------------------------------------------------------------
_ROLE_TAG = re.compile(r"(?:^|(?<=\s))(USER|ASSISTANT):")
_MMSAFE_META = ("entity", "entity_type", "replacement", "text_prompt", "mid_prompt", "type")


def parse_flat_conversation(text: str, where: str, rid: str) -> list[dict]:
    """``USER: a ASSISTANT: b USER: <image>\\nc ASSISTANT:`` -> chat messages, role tags stripped.

    Text before the first tag becomes a system message; the trailing empty ``ASSISTANT:`` (the
    generation cue) is dropped. The one ``<image>`` marker becomes an image part where it stood.
    """
    tags = list(_ROLE_TAG.finditer(text))
    if not tags:
        turns = [("user", text.strip())]
        head = ""
    else:
        head = text[:tags[0].start()].strip()
        turns = [(m.group(1).lower(), text[m.end():(tags[i + 1].start() if i + 1 < len(tags) else len(text))].strip())
                 for i, m in enumerate(tags)]
    if turns and turns[-1][0] == "assistant" and not turns[-1][1]:
        turns.pop()
    if not turns or turns[-1][0] != "user":
        raise RecordError("the flat conversation must end with a USER turn (optionally followed by "
                          "an empty 'ASSISTANT:')", where=where, record_id=rid)
    n_markers = text.count(IMAGE_MARKER)
    if n_markers != 1:
        raise RecordError(f"expected exactly one {IMAGE_MARKER} marker in the question, found {n_markers}",
                          where=where, record_id=rid)
    messages = [_text_turn("system", head)] if head else []
    for role, body in turns:
        if IMAGE_MARKER in body:
            if role != "user":
                raise RecordError(f"{IMAGE_MARKER} marker in an ASSISTANT turn; it must be in a USER turn",
                                  where=where, record_id=rid)
            messages.append({"role": role, "content": split_markers(body)})
        else:
            messages.append(_text_turn(role, body))
    return messages


def last_user_turn(flat: str) -> str:
    """The text of the last ``USER:`` turn of a flat conversation (``<image>`` markers removed)."""
    tags = [m for m in _ROLE_TAG.finditer(flat) if m.group(1) == "USER"]
    if not tags:
        return flat.strip()
    body = flat[tags[-1].end():]
    nxt = _ROLE_TAG.search(body)
    if nxt:
        body = body[:nxt.start()]
    return body.replace(IMAGE_MARKER, "").strip()


def _strip_assistant(text: Any, name: str, where: str, rid: str) -> str:
    if not isinstance(text, str):
        raise RecordError(f"missing or non-string '{name}'", where=where, record_id=rid)
    text = text.strip()
    if text.startswith("ASSISTANT:"):
        text = text[len("ASSISTANT:"):].strip()
    return text


@IMPORTERS.register("mmsafe_po")
def import_mmsafe_po(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """An MMSafe-PO row (GitHub ``question`` or HF ``prompt``); rejected source is ``human``."""
    rid = row_id(row, where)
    question = row.get("question", row.get("prompt"))
    if not isinstance(question, str) or not question.strip():
        raise RecordError("missing 'question' (or 'prompt') string", where=where, record_id=rid)
    messages = parse_flat_conversation(question, where, rid)
    images = _image_list(row.get("image"), where, rid, opts) if row.get("image") is not None else []
    if len(images) != 1:
        raise RecordError(f"expected one image, got {len(images)}", where=where, record_id=rid)
    meta = {k: row[k] for k in _MMSAFE_META if row.get(k) is not None}
    for key in ("text_prompt", "mid_prompt"):
        # The released files keep these as whole flat conversations; our schema (and `bpo safety build`)
        # keeps the last user turn only, the history being in `prompt`. Keep the original beside it.
        if isinstance(meta.get(key), str) and _ROLE_TAG.search(meta[key]):
            meta[f"{key}_flat"] = meta[key]
            meta[key] = last_user_turn(meta[key])
    meta |= _extra_meta(row, {"id", "question", "prompt", "image", "chosen", "rejected", *_MMSAFE_META})
    return finish({"id": rid, "images": images, "prompt": messages,
                   "chosen": _strip_assistant(row.get("chosen"), "chosen", where, rid),
                   "rejected": [{"text": _strip_assistant(row.get("rejected"), "rejected", where, rid),
                                 "source": "human"}],
                   "meta": meta}, where)


# ---- llava_sft ----------------------------------------------------------------------------------
_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system"}


def _llava_turns(row: dict, where: str, rid: str, opts: ImportOptions | None) -> tuple[list, list]:
    convs = row.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError("'conversations' must be a non-empty list of {from, value}", where=where, record_id=rid)
    images = _image_list(row.get("image"), where, rid, opts) if row.get("image") is not None else []
    turns, n_markers = [], 0
    for k, t in enumerate(convs):
        role = _LLAVA_ROLES.get(t.get("from")) if isinstance(t, dict) else None
        if role is None or not isinstance(t.get("value"), str):
            raise RecordError(f"conversations[{k}] needs 'from' in human|gpt|system and a 'value' string",
                              where=where, record_id=rid)
        value = t["value"]
        if IMAGE_MARKER in value:
            if role != "user":
                raise RecordError(f"{IMAGE_MARKER} marker in conversations[{k}] ({t['from']}); it belongs "
                                  "in a human turn", where=where, record_id=rid)
            n_markers += value.count(IMAGE_MARKER)
            turns.append({"role": role, "content": split_markers(value) if images else value})
        else:
            turns.append(_text_turn(role, value.strip()))
    if n_markers != len(images):
        raise RecordError(f"{len(images)} image(s) but {n_markers} {IMAGE_MARKER} marker(s) in the "
                          "conversation; they must match", where=where, record_id=rid)
    return turns, images


def _llava_record(rid: str, turns: list, upto: int, images: list, row: dict, where: str) -> Record:
    """The record answering with ``turns[upto]`` (an assistant turn)."""
    meta = _extra_meta(row, {"id", "image", "conversations"})
    return finish({"id": rid, "images": images, "prompt": turns[:upto],
                   "chosen": turns[upto]["content"], "rejected": [], "meta": meta}, where)


@IMPORTERS.register("llava_sft")
def import_llava_sft(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """A LLaVA SFT row -> a chosen-only record answering the last human turn."""
    rid = row_id(row, where)
    turns, images = _llava_turns(row, where, rid, opts)
    last = len(turns) - 1
    if turns[last]["role"] != "assistant" or last == 0 or turns[last - 1]["role"] != "user":
        raise RecordError("the conversation must end with a gpt answer to a human turn", where=where,
                          record_id=rid)
    return _llava_record(rid, turns, last, images, row, where)


def import_llava_sft_turns(row: dict, where: str, *, opts: ImportOptions | None = None) -> list[Record]:
    """``--split-turns``: one record per gpt answer (id ``<id>-t<k>``, k = 1, 2, ...)."""
    rid = row_id(row, where)
    turns, images = _llava_turns(row, where, rid, opts)
    out, k = [], 0
    for i, t in enumerate(turns):
        if t["role"] == "assistant" and i > 0 and turns[i - 1]["role"] == "user":
            k += 1
            out.append(_llava_record(f"{rid}-t{k}", turns, i, images, row, where))
    if not out:
        raise RecordError("no gpt answer following a human turn", where=where, record_id=rid)
    return out


# ---- bpo (identity) -----------------------------------------------------------------------------
@IMPORTERS.register("bpo")
def import_bpo(row: dict, where: str, *, opts: ImportOptions | None = None) -> Record:
    """Rows already in our schema (checked by :meth:`Record.from_dict`)."""
    return finish(row, where)


# ---- files --------------------------------------------------------------------------------------
def detect_format(row: dict) -> str:
    """Guess the format from the first row's keys."""
    keys = set(row)
    if "completions" in keys:
        return "bootstrapped_po"
    if "conversations" in keys and "rejected_conversations" in keys:
        return "povid"
    if "conversations" in keys:
        return "llava_sft"
    mmsafe_only = {"entity", "entity_type", "text_prompt", "mid_prompt", "replacement"}
    if {"question", "chosen", "rejected"} <= keys and not keys & mmsafe_only and not str(
            row.get("chosen", "")).lstrip().startswith("ASSISTANT:"):
        return "rlaif_v"  # RLAIF-V: a plain question, no flat USER:/ASSISTANT: conversation
    if keys & ({"question"} | mmsafe_only):
        return "mmsafe_po"
    if {"chosen", "rejected"} <= keys or {"prompt", "chosen"} <= keys:
        if isinstance(row.get("prompt"), list) and isinstance(row.get("chosen"), str):
            return "bpo"
        if isinstance(row.get("prompt"), str) and str(row.get("chosen", "")).lstrip().startswith("ASSISTANT:"):
            return "mmsafe_po"
        return "trl"
    raise BpoError(f"cannot detect the input format from the keys {sorted(keys)}; pass --format "
                   f"({'|'.join(IMPORTERS.names())})")


def iter_rows(path: str | os.PathLike, *, skip_bad: bool = False, errors: list | None = None):
    """Yield ``(where, row)`` from ``.jsonl``, ``.json`` (a list) or ``.parquet``."""
    path = Path(path)
    _check_readable(path)
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
    elif path.suffix == ".json":
        for i, row in read_json_or_jsonl(path):
            yield f"{path}:{i}", row
    else:
        for lineno, row in read_jsonl(path, skip_bad=skip_bad, errors=errors):
            yield f"{path}:{lineno}", row


def _iter_parquet(path: Path):
    # pyarrow rather than datasets: image columns stay {"bytes", "path"} dicts (no PIL decode), and
    # batches keep memory flat on the 5.7k-row MMSafe-PO file with embedded images.
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BpoError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise BpoError(f"{path}: not a readable parquet file ({exc})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            i += 1
            yield f"{path}:{i}", row


@dataclass
class ImportResult:
    records: list[Record]
    skipped: list[RecordError]
    fmt: str
    rows: int = 0
    images_written: int = 0
    renamed_ids: int = 0  # repeated ids made unique (llava_sft / povid)


def import_file(path: str | os.PathLike, fmt: str = "auto", *, image_out: str | os.PathLike | None = None,
                image_prefix: str = "", on_error: str = "raise", split_turns: bool = False,
                progress: bool = True) -> ImportResult:
    """Import every row of ``path``; ``on_error="skip"`` skips and collects malformed rows."""
    if on_error not in ("raise", "skip"):
        raise BpoError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if fmt != "auto":
        IMPORTERS.get(fmt)  # unknown names fail here, with a suggestion
    if split_turns and fmt not in ("auto", "llava_sft"):
        raise BpoError(f"--split-turns only applies to --format llava_sft, not {fmt!r}")
    from tqdm import tqdm

    opts = ImportOptions(images=ImageSink(image_out, image_prefix) if image_out is not None else None)
    skipped: list[RecordError] = []
    records: list[Record] = []
    seen: dict[str, str] = {}
    rows = renamed = 0
    fn = None
    for where, row in tqdm(iter_rows(path, skip_bad=on_error == "skip", errors=skipped),
                           desc=f"import {Path(path).name}", unit="row", disable=not progress or None):
        rows += 1
        if fn is None:
            fmt = detect_format(row) if fmt == "auto" else fmt
            if split_turns and fmt != "llava_sft":
                raise BpoError(f"--split-turns only applies to llava_sft rows, but {path} looks like {fmt!r}")
            fn = import_llava_sft_turns if split_turns else IMPORTERS.get(fmt)
        try:
            out = fn(row, where, opts=opts)
            batch = out if isinstance(out, list) else [out]
            if fmt in _IMAGE_IDS:
                renamed += _disambiguate(batch, seen)
            for rec in batch:
                if rec.id in seen:
                    raise RecordError(f"duplicate id (first at {seen[rec.id]}); ids must be unique — add or "
                                      "fix the 'id' field", where=where, record_id=rec.id)
            for rec in batch:
                seen[rec.id] = where
            records.extend(batch)
        except RecordError as exc:
            if on_error == "raise":
                raise
            skipped.append(exc)
    if not records:
        # Zero records is never a result: an empty file, or every row malformed (with --on-error skip).
        first = f"; first problem: {skipped[0]}" if skipped else ""
        raise BpoError(f"{path}: no records imported from {rows} row(s){first}"
                       + ("" if rows else " (the file is empty)"))
    written = opts.images.written if opts.images else 0
    return ImportResult(records=records, skipped=skipped, fmt=fmt, rows=rows, images_written=written,
                        renamed_ids=renamed)


# Formats whose ids name the image, not the conversation: LLaVA's llava_v1_5_mix665k.json gives COCO rows the
# image's file stem as id, and one COCO image serves several of its source sets (LLaVA-Instruct, VQAv2,
# OK-VQA, A-OKVQA, RefCOCO: 364k COCO rows over ~118k train2017 images), so ids repeat by design.
_IMAGE_IDS = ("llava_sft", "povid")


def _disambiguate(batch: list[Record], seen: dict[str, str]) -> int:
    """Rename a repeated id to ``<id>-dup<k>`` (k = 2, 3, ... in file order: deterministic); returns how many."""
    n = 0
    for rec in batch:
        if rec.id not in seen:
            continue
        k = 2
        while f"{rec.id}-dup{k}" in seen:
            k += 1
        rec.meta["original_id"] = rec.id
        rec.id = f"{rec.id}-dup{k}"
        n += 1
    return n


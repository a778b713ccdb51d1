"""The preference record schema shared by every stage, and its JSONL reader/writer.

One JSONL line per record::

    {"id": "coco-9",
     "images": ["coco/000000000009.jpg"],          # relative to an image root; zero or more
     "prompt": [                                   # chat messages, multi-turn allowed
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}],
     "chosen": "A bowl of broccoli ...",
     "rejected": [{"text": "A plate of pizza ...", "source": "weakened", "meta": {"step": 500}}],
     "meta": {"objects": ["bowl", "broccoli"]}}

A message's ``content`` is a string (text only) or a list of parts in the Hugging Face chat format
(``{"type": "image"}`` / ``{"type": "text", "text": ...}``), which processors' chat templates render
directly. The number of image parts must equal ``len(images)``: the k-th image part is ``images[k]``.
Chosen-only records (``rejected == []``) are valid input to ``bpo bootstrap``; training needs >= 1.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bpo.errors import BpoError, RecordError
from bpo.io import read_jsonl, write_jsonl

ROLES = ("system", "user", "assistant")
KNOWN_SOURCES = ("human", "weakened", "injected", "self", "blind")


@dataclass
class Negative:
    """One rejected response and how it was made (``source`` + free ``meta``: model, step, seed ...)."""

    text: str
    source: str = "human"
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"text": self.text, "source": self.source}
        if self.meta:
            out["meta"] = self.meta
        return out


Message = dict  # {"role": str, "content": str | list[part]}


@dataclass
class Record:
    id: str
    prompt: list[Message]
    chosen: str
    rejected: list[Negative] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------------
    def n_image_parts(self) -> int:
        return sum(
            1 for m in self.prompt if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image"
        )

    def last_user_text(self) -> str:
        for m in reversed(self.prompt):
            if m.get("role") == "user":
                return message_text(m)
        return ""

    def without_images(self) -> Record:
        """The same conversation with every image part and image removed (the Blind-PO input x_b)."""
        rec = copy.deepcopy(self)
        for m in rec.prompt:
            if isinstance(m.get("content"), list):
                m["content"] = [p for p in m["content"] if not (isinstance(p, dict) and p.get("type") == "image")]
        rec.images = []
        return rec

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "images": list(self.images), "prompt": self.prompt,
                               "chosen": self.chosen, "rejected": [n.to_dict() for n in self.rejected]}
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, d: dict, *, where: str | None = None) -> Record:
        """Parse and check the schema (not the images: see :mod:`bpo.data.validate`)."""
        rid = d.get("id")
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            raise RecordError("missing 'id'; every record needs a unique id", where=where)
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise RecordError(f"'id' must be a string or an integer, not {type(rid).__name__}", where=where)
        rid = str(rid)

        def fail(msg: str):
            raise RecordError(msg, where=where, record_id=rid)

        prompt = d.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt:
            fail("'prompt' must be a non-empty list of chat messages")
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                fail(f"prompt[{i}] needs a 'role' in {ROLES}")
            c = m.get("content")
            if isinstance(c, list):
                for p in c:
                    if not isinstance(p, dict) or p.get("type") not in ("image", "text"):
                        fail(f"prompt[{i}].content parts must be {{'type': 'image'}} or {{'type': 'text', 'text': ...}}")
                    if p["type"] == "text" and not isinstance(p.get("text"), str):
                        fail(f"prompt[{i}] has a text part without a 'text' string")
            elif not isinstance(c, str):
                fail(f"prompt[{i}].content must be a string or a list of parts")
        if prompt[-1]["role"] != "user":
            fail("the last prompt message must be from the user (the response answers it)")
        chosen = d.get("chosen")
        if not isinstance(chosen, str) or not chosen.strip():
            fail("empty or missing 'chosen' response")
        rejected_raw = d.get("rejected", [])
        if isinstance(rejected_raw, (str, dict)):
            rejected_raw = [rejected_raw]
        if not isinstance(rejected_raw, list):
            fail("'rejected' must be a list of {text, source, meta}")
        rejected = []
        for j, r in enumerate(rejected_raw):
            if isinstance(r, str):
                r = {"text": r}
            if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not r["text"].strip():
                fail(f"rejected[{j}] has an empty or missing 'text'")
            src = r.get("source", "human")
            if not isinstance(src, str) or not src:
                fail(f"rejected[{j}].source must be a non-empty string")
            if not isinstance(r.get("meta") or {}, dict):
                fail(f"rejected[{j}].meta must be an object ({{...}}), not {type(r['meta']).__name__}")
            rejected.append(Negative(text=r["text"], source=src, meta=dict(r.get("meta") or {})))
        images = d.get("images", [])
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images):
            fail("'images' must be a list of relative paths")
        if not isinstance(d.get("meta") or {}, dict):
            fail(f"'meta' must be an object ({{...}}), not {type(d['meta']).__name__}")
        rec = cls(id=rid, prompt=prompt, chosen=chosen, rejected=rejected, images=images,
                  meta=dict(d.get("meta") or {}))
        n_parts = rec.n_image_parts()
        if n_parts != len(images):
            fail(f"{n_parts} image part(s) in the prompt but {len(images)} image path(s); they must match")
        return rec


def message_text(message: Message) -> str:
    c = message.get("content")
    if isinstance(c, str):
        return c
    return "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")


def user_turn(text: str, n_images: int = 0) -> Message:
    """A user message with ``n_images`` image parts placed before the text (LLaVA's convention)."""
    if n_images == 0:
        return {"role": "user", "content": text}
    parts: list[dict] = [{"type": "image"} for _ in range(n_images)]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def parse_unique(rows: Iterable[tuple[int, Any]], parse: Callable[[Any, str, int], Any], path, *, skip: bool,
                 errors: list[RecordError] | None = None) -> Generator[Any, None, int]:
    """Yield ``parse(obj, where, lineno)`` for every ``(lineno, obj)`` row of ``path``, each ``.id`` unique in it.

    A :class:`RecordError` (the parser's, or a repeated id) is raised, or with ``skip`` collected in ``errors``
    and its row left out. Returns how many rows there were (``n = yield from parse_unique(...)``). The one
    reader loop of every bpo JSONL format (records here, text pairs in :mod:`bpo.safety.hh`).
    """
    seen: set[str] = set()
    n = 0
    for lineno, obj in rows:
        n += 1
        where = f"{path}:{lineno}"
        try:
            item = parse(obj, where, lineno)
            if item.id in seen:
                raise RecordError("duplicate id; ids must be unique within a file", where=where, record_id=item.id)
        except RecordError as exc:
            if not skip:
                raise
            if errors is not None:
                errors.append(exc)
            continue
        seen.add(item.id)
        yield item
    return n


def _parse_record(obj, where: str, _lineno: int) -> Record:
    rec = Record.from_dict(obj, where=where)
    rec.meta.setdefault("_where", where)
    return rec


def read_records(path: str | os.PathLike, *, on_error: str = "raise",
                 errors: list[RecordError] | None = None) -> Iterator[Record]:
    """Yield records from a JSONL file; ``on_error="skip"`` collects problems in ``errors``."""
    if on_error not in ("raise", "skip"):
        raise BpoError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    skip = on_error == "skip"
    lines = yield from parse_unique(read_jsonl(path, skip_bad=skip, errors=errors), _parse_record, path, skip=skip,
                                    errors=errors)
    if not lines and not (errors if skip else None):
        # An empty input is never what was meant (a failed earlier step, a wrong path): say so, do not produce 0.
        raise BpoError(f"{path}: the file is empty (no records); check the path or the step that wrote it")


def write_records(path: str | os.PathLike, records) -> int:
    """Atomically write records (``_where`` bookkeeping is not persisted)."""

    def rows():
        for r in records:
            d = r.to_dict()
            if "meta" in d:
                d["meta"] = {k: v for k, v in d["meta"].items() if not k.startswith("_")}
                if not d["meta"]:
                    del d["meta"]
            yield d

    return write_jsonl(path, rows())


def record_where(rec: Record) -> str:
    return rec.meta.get("_where", "?")

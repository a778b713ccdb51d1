"""``bpo generate``: a model's responses to an eval set, for ``bpo eval chair | pope | safety``.

Output: one JSONL row per record, in input order, deduplicated by id::

    {"id": "pope-12", "response": "Yes, there is a dog.", "prompt": "<last user text>", "meta": {...},
     "images": [...], "generation": {"max_new_tokens": 512, "temperature": 0.0, ..., "preset": null}}

``images`` and ``generation`` let ``bpo eval`` record the protocol (image list, token budget, decoding).

``meta`` is the record's own ``meta`` (labels, object lists, categories the metrics need). The run
uses the generation engine (bpo.models.generation), so it is batched, seeded, resumable after a kill and data-parallel under
``accelerate launch`` (see :mod:`bpo.jobs`). An empty response is a response (it is
written and scored), not an error; only unusable inputs (missing or corrupt images) are errors.
"""

from __future__ import annotations

import copy

from bpo.data.records import Record
from bpo.errors import BpoError, RecordError
from bpo.io import read_jsonl
from bpo.jobs import Outcome, fail
from bpo.models.generation import Request, SamplingSettings

NO_REFERENCE = "(no reference answer)"


def read_eval_records(path, *, on_error: str = "skip", limit: int | None = None
                      ) -> tuple[list[Record], list[RecordError]]:
    """Records for generation. Eval sets often have no reference answer, so ``chosen`` may be absent."""
    if on_error not in ("skip", "raise"):
        raise BpoError(f"--on-error must be skip or raise, not {on_error!r}")
    records, errors, seen = [], [], set()
    for lineno, obj in read_jsonl(path, skip_bad=on_error == "skip", errors=errors):
        obj = dict(obj, chosen=obj.get("chosen") or NO_REFERENCE)
        try:
            rec = Record.from_dict(obj, where=f"{path}:{lineno}")
            if rec.id in seen:
                raise RecordError("duplicate id; ids must be unique within a file", where=f"{path}:{lineno}",
                                  record_id=rec.id)
        except RecordError as exc:
            if on_error == "raise":
                raise
            errors.append(exc)
            continue
        seen.add(rec.id)
        rec.meta.setdefault("_where", f"{path}:{lineno}")
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    return records, errors


def with_prompt_text(rec: Record, text: str) -> Record:
    """The record with its last user turn's text replaced (its image parts kept, before the text)."""
    rec = copy.deepcopy(rec)
    for msg in reversed(rec.prompt):
        if msg.get("role") != "user":
            continue
        if isinstance(msg.get("content"), list):
            parts = [p for p in msg["content"] if p.get("type") == "image"]
            msg["content"] = parts + [{"type": "text", "text": text}]
        else:
            msg["content"] = text
        break
    return rec


class ResponseGenerator:
    """Answer each record's prompt (optionally another prompt text from ``meta``, optionally blind)."""

    source = "response"

    def __init__(self, engine, settings: SamplingSettings, *, model: str, adapter: str | None = None,
                 prompt_field: str | None = None, blind: bool = False, preset: str | None = None,
                 prompt_text: str | None = None):
        self.engine, self.settings = engine, settings
        self.model_name, self.adapter = model, adapter
        self.prompt_field, self.blind = prompt_field, blind
        self.preset, self.prompt_text = preset, prompt_text  # prompt_text: a protocol's fixed prompt

    def fingerprint(self) -> dict:
        return {"generator": "generate", "model": self.model_name, "adapter": self.adapter,
                "backend": self.engine.name, "prompt_field": self.prompt_field, "blind": self.blind,
                **self.settings.to_meta(), **({"preset": self.preset, "prompt_text": self.prompt_text}
                                              if self.preset else {})}

    def prepare(self, rec: Record) -> Record:
        if self.prompt_field:
            text = rec.meta.get(self.prompt_field)
            if not isinstance(text, str) or not text.strip():
                raise RecordError(f"no text in meta.{self.prompt_field} (--prompt-field); add it or drop the flag",
                                  where=rec.meta.get("_where"), record_id=rec.id)
            rec = with_prompt_text(rec, text)
        if self.prompt_text is not None:
            rec = with_prompt_text(rec, self.prompt_text)
        return rec.without_images() if self.blind else rec

    def process(self, records: list[Record]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        requests = []
        for rec in records:
            try:
                requests.append(Request(rec.id, self.prepare(rec)))
            except RecordError as exc:
                outcomes[rec.id] = Outcome(rec.id, error=exc)
        for req, gen in zip(requests, self.engine.generate(requests, self.settings)):
            rec = req.record
            if gen.error is not None:
                outcomes[rec.id] = Outcome(rec.id, error=gen.error)
                continue
            meta = {k: v for k, v in rec.meta.items() if not k.startswith("_")}
            outcomes[rec.id] = Outcome(rec.id, row={"id": rec.id, "response": gen.text,
                                                    "prompt": rec.last_user_text(), "meta": meta,
                                                    "images": list(rec.images),
                                                    "generation": {**self.settings.to_meta(), "preset": self.preset}})
        return [outcomes.get(r.id) or fail(r, "no result") for r in records]

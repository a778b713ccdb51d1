"""The Blind-PO data pipeline: text-only pairs -> entity -> image -> rewrite -> filter -> records.

Each kept pair becomes a :class:`bpo.data.records.Record` whose prompt is the history verbatim plus the
rewritten last user turn with the image part first (LLaVA's convention), ``chosen`` the preferred
answer and one ``rejected`` negative with source ``"human"``. ``meta`` carries the MMSafe-PO fields
(``entity``, ``entity_type``, ``replacement``, ``text_prompt``, ``mid_prompt``, ``type``), so the output
is a superset of that format (:func:`bpo.safety.mmsafe.to_mmsafe_po` flattens it).

Filters, counted in ``build_report.json`` (the paper kept 5,392 of 42,537 HH train pairs and did not
publish its criteria; these are ours): ``no_entity``, ``no_image`` (entity known but its image file is
missing), ``llm_rewrite_invalid`` (empty or runaway LLM reply), ``entity_still_named`` (a name or alias
survives the rewrite), ``too_long`` (``max_prompt_words``, or a caller's token counter, e.g. the
paper's 192-token text budget) and ``duplicate`` (same image and the same final conversation, or the
same source conversation: a repeat that only drew another phrase is still a repeat).
Every input row is accounted for: ``rows_read = written + sum(filtered)``; malformed rows are
``bad_rows`` (skipped with ``on_error="skip"``, fatal otherwise). ``no_image`` also covers an entity
that the column or LLM backend found but the index does not list.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from bpo.data.records import Negative, Record, message_text, user_turn, write_records
from bpo.errors import BpoError, RecordError
from bpo.io import file_sha256, write_json
from bpo.safeguard import refuse_overwrite
from bpo.safety.entities import EntityMatch, make_finder, names_present
from bpo.safety.hh import TextPair, read_pairs
from bpo.safety.index import ENTITY_TYPES, ImageIndex, load_index
from bpo.safety.llm import ChatLLM
from bpo.safety.mmsafe import to_mmsafe_po  # noqa: F401  (re-exported: build -> export in one import)
from bpo.safety.rewrite import llm_rewrite, rewrite

FILTER_REASONS = ("no_entity", "no_image", "llm_rewrite_invalid", "entity_still_named", "too_long", "duplicate")
TokenCounter = Callable[[Record], int]


@dataclass
class BuildOptions:
    entity_backend: str = "gazetteer"
    seed: int = 0                       # phrase choice: hash of (seed, record id)
    llm_rewrite: bool = False           # polish the rule-based rewrite with an LLM
    on_error: str = "raise"             # malformed pair / index rows: raise or skip (and count)
    max_prompt_words: int | None = None  # cheap length budget over all prompt turns
    max_prompt_tokens: int | None = None  # budget for the caller's token counter
    data_type: str = "harmless"         # MMSafe-PO ``type`` (HH harmless-base)
    id_prefix: str | None = None        # ids for rows without one: <prefix><line>

    def __post_init__(self):
        if self.on_error not in ("raise", "skip"):
            raise BpoError(f"on_error must be 'raise' or 'skip', not {self.on_error!r}")
        for key in ("max_prompt_words", "max_prompt_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise BpoError(f"{key} must be at least 1, not {value}")


def prompt_words(record: Record) -> int:
    """Whitespace words over all prompt turns (the ``max_prompt_words`` proxy for a token budget)."""
    return sum(len(message_text(m).split()) for m in record.prompt)


def _conversation(prompt) -> str:
    return "\n".join(f"{m['role']}: {message_text(m)}" for m in prompt)


class Builder:
    """Converts pairs one at a time and keeps the counts (usable without files, e.g. in tests)."""

    def __init__(self, index: ImageIndex, finder, options: BuildOptions, *, llm: ChatLLM | None = None,
                 token_counter: TokenCounter | None = None):
        if options.llm_rewrite and llm is None:
            raise BpoError("llm_rewrite needs an LLM: pass --llm-model (and --llm-base-url for an endpoint)")
        if (token_counter is None) != (options.max_prompt_tokens is None):
            raise BpoError("a token budget needs both a token counter and max_prompt_tokens")
        self.index, self.finder, self.options = index, finder, options
        self.llm, self.token_counter = llm, token_counter
        self.filtered: Counter = Counter({r: 0 for r in FILTER_REASONS})
        self.examples: dict[str, list[str]] = {}
        self.info: Counter = Counter()
        self._seen: set[tuple[str, str, str]] = set()

    def _drop(self, reason: str, pair: TextPair) -> None:
        self.filtered[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 5:
            ids.append(pair.id)

    def _final_text(self, pair: TextPair, match: EntityMatch, text: str):
        """``(final last turn, mid, replacement, how)`` or a filter reason string."""
        rw = rewrite(text, match, record_id=pair.id, seed=self.options.seed)
        final, how = rw.text, "rules"
        if self.options.llm_rewrite:
            polished = llm_rewrite(self.llm, text=text, draft=rw.text, match=match, replacement=rw.replacement)
            if polished is None:
                return "llm_rewrite_invalid"
            final, how = polished, "llm"
        names = {*(match.entry.names() if match.entry else (match.entity,)), match.surface(text)}
        if names_present(final, names):
            return "entity_still_named"
        return final, rw.mid, rw.replacement, how

    def convert(self, pair: TextPair) -> Record | None:
        """The record for ``pair``, or ``None`` after counting why it was filtered."""
        text = pair.last_user_text()
        match = self.finder.find(text, pair)
        if match is None:
            self._drop("no_entity", pair)
            return None
        if match.entry is None or not match.entry.image:
            self._drop("no_image", pair)
            return None
        out = self._final_text(pair, match, text)
        if isinstance(out, str):
            self._drop(out, pair)
            return None
        final, mid, replacement, how = out
        prompt = [*pair.prompt[:-1], user_turn(final, 1)]
        meta = {"type": self.options.data_type, "entity": match.entity, "entity_type": match.type,
                "entity_mention": match.surface(text), "replacement": replacement, "text_prompt": text,
                "mid_prompt": mid, "rewrite": how}
        record = Record(id=pair.id, prompt=prompt, chosen=pair.chosen, rejected=[Negative(pair.rejected, "human")],
                        images=[match.entry.image], meta=meta)
        if self.options.max_prompt_words and prompt_words(record) > self.options.max_prompt_words:
            self._drop("too_long", pair)
            return None
        if self.token_counter and self.token_counter(record) > self.options.max_prompt_tokens:
            self._drop("too_long", pair)
            return None
        # Same final conversation + image, or same source conversation + image (which differs from an
        # earlier row only by the phrase drawn for its id): either way the multimodal item repeats.
        image = match.entry.image
        keys = [("final", _conversation(prompt), image), ("source", _conversation(pair.prompt), image)]
        if any(k in self._seen for k in keys):
            self._drop("duplicate", pair)
            return None
        self._seen.update(keys)
        self.info["with_history"] += len(pair.prompt) > 1
        self.info["entity_in_history"] += any(
            names_present(message_text(m), match.entry.names()) for m in pair.prompt[:-1])
        return record

    def run(self, pairs: Iterable[TextPair], *, errors: list | None = None) -> list[Record]:
        """Convert all pairs; a :class:`RecordError` raised for one pair is fatal or collected per on_error."""
        from tqdm import tqdm

        records = []
        for pair in tqdm(pairs, desc="blind-po build", unit="pair", disable=None):
            try:
                rec = self.convert(pair)
            except RecordError as exc:
                if self.options.on_error == "raise":
                    raise
                if errors is not None:
                    errors.append(exc)
                continue
            if rec is not None:
                records.append(rec)
        return records


def run_build(pairs_path: str | os.PathLike, index_path: str | os.PathLike, image_root: str | os.PathLike,
              out_path: str | os.PathLike, options: BuildOptions | None = None, *, llm: ChatLLM | None = None,
              token_counter: TokenCounter | None = None, report_path: str | os.PathLike | None = None,
              finder_options: dict | None = None) -> dict:
    """Build ``out_path`` (JSONL records) and ``build_report.json`` (beside it unless ``report_path``)."""
    options = options or BuildOptions()
    out_path = Path(out_path)
    report_path = Path(report_path) if report_path else out_path.parent / "build_report.json"
    refuse_overwrite({"--out": str(out_path), "--report": str(report_path)},
                     {"--pairs": str(pairs_path), "--index": str(index_path)})
    index = load_index(index_path, image_root, on_error=options.on_error)
    finder_kw = dict(finder_options or {})
    if options.entity_backend == "llm":
        if llm is None:
            raise BpoError("the llm entity backend needs an LLM: pass --llm-model (and --llm-base-url)")
        finder_kw["llm"] = llm
    finder = make_finder(options.entity_backend, index, **finder_kw)
    builder = Builder(index, finder, options, llm=llm, token_counter=token_counter)
    errors: list[RecordError] = []
    pairs = list(read_pairs(pairs_path, on_error=options.on_error, errors=errors, id_prefix=options.id_prefix))
    records = builder.run(pairs, errors=errors)
    if not records:
        # Zero records is never a result: say why instead of writing an empty file and exiting 0.
        dropped = ", ".join(f"{k} {v}" for k, v in builder.filtered.items() if v)
        why = f"; first bad row: {errors[0]}" if errors else (f"; filtered: {dropped}" if dropped else "")
        raise BpoError(f"{pairs_path}: no records built from {len(pairs) + len(errors)} row(s) "
                       f"({len(errors)} bad){why}")
    write_records(out_path, records)
    report = {
        "inputs": {"pairs": str(pairs_path), "pairs_sha256": file_sha256(pairs_path), "index": str(index_path),
                   "index_sha256": file_sha256(index_path), "image_root": str(image_root)},
        "options": asdict(options),
        "output": str(out_path),
        "rows_read": len(pairs),
        "bad_rows": len(errors),
        "written": len(records),
        "filtered": dict(builder.filtered),
        "filtered_examples": builder.examples,
        "entity_types": {t: n for t in ENTITY_TYPES if (n := sum(r.meta["entity_type"] == t for r in records))},
        "with_history": builder.info["with_history"],
        "entity_in_history": builder.info["entity_in_history"],
        "entity_backend_stats": dict(finder.stats),
        "index": index.report(),
        "errors": [str(e) for e in errors[:50]],
    }
    if hasattr(llm, "hits"):
        report["llm_cache"] = {"hits": llm.hits, "misses": llm.misses}
    write_json(report_path, report)
    report["report_path"] = str(report_path)
    return report

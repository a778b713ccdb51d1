"""Find the entity named in the last user turn (the paper's NER step), with pluggable backends.

Backends (registry ``ENTITY_BACKENDS``):

* ``gazetteer`` (default; offline, deterministic): every name and alias in the image index. Matching is
  case-insensitive and word-boundary aware (a name glued to a word or hyphen, as in "Obamacare" or
  "Obama-era", does not match); all-uppercase aliases of up to 5 characters ("UN", "NASA") are
  acronyms and match only in upper case, so the alias "US" does not fire on "tell us". A possessive
  ``'s`` / ``’s`` (or a bare ``'`` after a final s) is recorded on the mention so the rewrite can keep
  it. Overlapping candidates resolve longest first, then leftmost: "New York Times" beats "New York".
* ``column``: the row's own ``entity`` (and optional ``entity_type``) column, located in the text.
* ``llm``: the versioned prompt ``templates/entity_v1.txt`` sent to an LLM (:mod:`bpo.safety.llm`);
  the reply must be exactly ``ENTITY: <text> | TYPE: PER|ORG|LOC|MISC`` or ``NONE``, and the entity
  must occur in the text, otherwise it counts as not found (the model may not invent names).

The paper used a BERT CoNLL-03 tagger; the gazetteer is our offline default because only entities
that have an image in the index can be used anyway. Type precedence: the ``entity_type`` column,
then the index entry, then the LLM's guess (the curated index is more reliable than a model).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from bpo.errors import RecordError
from bpo.registry import Registry
from bpo.safety.hh import TextPair
from bpo.safety.index import ENTITY_TYPES, ImageIndex, IndexEntry, name_key, normalize_type
from bpo.safety.llm import ChatLLM, render_template

ENTITY_BACKENDS = Registry("entity backend")
_WORD = re.compile(r"\w+")
_POSSESSIVE = re.compile(r"['’][sS](?!\w)")
_BARE_APOSTROPHE = re.compile(r"['’](?!\w)")


@dataclass(frozen=True)
class Mention:
    """One occurrence: ``text[start:end]`` is the name, ``possessive`` the ``'s`` right after it."""

    start: int
    end: int
    key: str
    possessive: str = ""

    @property
    def stop(self) -> int:
        return self.end + len(self.possessive)


def is_acronym(name: str) -> bool:
    return name.isupper() and len(name) <= 5 and not any(c.isspace() for c in name)


def _pattern(name: str) -> re.Pattern:
    body = r"\s+".join(re.escape(tok) for tok in name.split())
    return re.compile(body, 0 if is_acronym(name) else re.IGNORECASE)


class Gazetteer:
    """All occurrences of a fixed list of names in a text, overlaps resolved longest-then-leftmost."""

    def __init__(self, names: Iterable[tuple[str, str]], *, hyphen_joins: bool = True):
        """``names``: ``(surface name, key)`` pairs; the key says which entity a name belongs to.

        ``hyphen_joins``: a hyphen glues words ("Obama-era" is not a mention). Off for the
        "is the name still there" check, which must be stricter than the finder.
        """
        self._glue = "_-" if hyphen_joins else "_"
        self._by_first: dict[str, list[tuple[re.Pattern, str, str]]] = {}
        self._other: list[tuple[re.Pattern, str, str]] = []
        for name, key in names:
            name = " ".join(name.split())
            if not name:
                continue
            first = _WORD.match(name)
            item = (_pattern(name), key, name)
            if first:  # starts with a word char: only tried where a text word starts with the same word
                self._by_first.setdefault(first.group(0).lower(), []).append(item)
            else:
                self._other.append(item)

    def _candidates(self, text: str) -> Iterable[Mention]:
        tries = [(w.start(), item) for w in _WORD.finditer(text) for item in self._by_first.get(w.group(0).lower(), ())]
        for pattern, key, name in self._other:
            tries += [(m.start(), (pattern, key, name)) for m in pattern.finditer(text)]
        for pos, (pattern, key, name) in tries:
            m = pattern.match(text, pos)
            if not m:
                continue
            start, end = m.span()
            if start > 0 and (text[start - 1].isalnum() or text[start - 1] in self._glue):
                continue
            if end < len(text) and (text[end].isalnum() or text[end] in self._glue):
                continue
            poss = _POSSESSIVE.match(text, end)
            if not poss and name[-1] in "sS":
                poss = _BARE_APOSTROPHE.match(text, end)
            yield Mention(start, end, key, poss.group(0) if poss else "")

    def mentions(self, text: str) -> list[Mention]:
        """Non-overlapping mentions in priority order (longest first, then leftmost)."""
        chosen: list[Mention] = []
        for m in sorted(set(self._candidates(text)), key=lambda m: (-(m.end - m.start), m.start, m.key)):
            if all(m.end <= c.start or m.start >= c.end for c in chosen):
                chosen.append(m)
        return chosen


@dataclass(frozen=True)
class EntityMatch:
    """The record's entity: canonical name, CoNLL type, every mention of it, and its index entry."""

    entity: str
    type: str
    mentions: tuple[Mention, ...]
    entry: IndexEntry | None = None

    def surface(self, text: str) -> str:
        m = self.mentions[0]
        return text[m.start:m.end]


def names_present(text: str, names: Iterable[str]) -> list[str]:
    """Which of ``names`` still occur in ``text`` (gazetteer rules, but "Obama-era" counts)."""
    gaz = Gazetteer(((n, n) for n in names), hyphen_joins=False)
    return sorted({m.key for m in gaz.mentions(text)})


def _locate(text: str, entity: str, etype: str, entry: IndexEntry | None) -> EntityMatch | None:
    """Mentions of ``entity`` and, when it is in the index, of all its names."""
    names = [entity, *(entry.names() if entry else ())]
    gaz = Gazetteer((n, "x") for n in names)
    mentions = sorted(gaz.mentions(text), key=lambda m: m.start)
    if not mentions:
        return None
    return EntityMatch(entry.entity if entry else entity, etype, tuple(mentions), entry)


class GazetteerFinder:
    name = "gazetteer"

    def __init__(self, index: ImageIndex, **_):
        self.index = index
        self.stats: Counter = Counter()
        self._entries = {name_key(e.entity): e for e in index.entries}
        self.gazetteer = Gazetteer((n, name_key(e.entity)) for e in index.entries for n in e.names())

    def find(self, text: str, pair: TextPair | None = None) -> EntityMatch | None:
        found = self.gazetteer.mentions(text)
        if not found:
            return None
        entry = self._entries[found[0].key]
        mentions = tuple(sorted((m for m in found if m.key == found[0].key), key=lambda m: m.start))
        return EntityMatch(entry.entity, entry.type, mentions, entry)


class ColumnFinder:
    """The entity comes from the row (``entity`` / ``entity_type`` columns); we only locate it."""

    name = "column"

    def __init__(self, index: ImageIndex, *, column: str = "entity", type_column: str = "entity_type", **_):
        self.index, self.column, self.type_column = index, column, type_column
        self.stats: Counter = Counter()

    def find(self, text: str, pair: TextPair) -> EntityMatch | None:
        value = pair.extra.get(self.column)
        if not isinstance(value, str) or not value.strip():
            self.stats["column_empty"] += 1
            return None
        raw_type = pair.extra.get(self.type_column)
        etype = normalize_type(raw_type) if raw_type not in (None, "") else None
        if raw_type not in (None, "") and etype is None:
            raise RecordError(f"{self.type_column} {raw_type!r} is not one of {', '.join(ENTITY_TYPES)}",
                              where=pair.where, record_id=pair.id)
        entry = self.index.lookup(value)
        match = _locate(text, value.strip(), etype or (entry.type if entry else "MISC"), entry)
        if match is None:
            self.stats["column_entity_not_in_text"] += 1
        return match


_REPLY = re.compile(r"ENTITY:[ \t]*(?P<entity>[^|\n]*?)[ \t]*\|[ \t]*TYPE:[ \t]*(?P<type>PER|ORG|LOC|MISC)")


def parse_entity_reply(reply: str) -> tuple[str, str] | None:
    """``(entity, type)``, or ``None`` for ``NONE``; ``ValueError`` for anything else (strict on purpose:
    a chatty reply means the model did not follow the format, and guessing invites invented names)."""
    reply = reply.strip()
    if reply == "NONE":
        return None
    m = _REPLY.fullmatch(reply)
    if not m or not m.group("entity"):
        raise ValueError(f"reply does not follow the format: {reply[:80]!r}")
    return m.group("entity"), m.group("type")


class LLMFinder:
    name = "llm"

    def __init__(self, index: ImageIndex, *, llm: ChatLLM | None = None, template: str = "entity_v1", **_):
        if llm is None:
            raise ValueError("the llm entity backend needs an LLM (see bpo.safety.llm.make_llm)")
        self.index, self.llm, self.template = index, llm, template
        self.stats: Counter = Counter()

    def find(self, text: str, pair: TextPair | None = None) -> EntityMatch | None:
        try:
            parsed = parse_entity_reply(self.llm(render_template(self.template, text=text)))
        except ValueError:
            self.stats["llm_unparsable"] += 1
            return None
        if parsed is None:
            self.stats["llm_none"] += 1
            return None
        entity, etype = parsed
        # The returned string itself must be in the text (not just one of its index aliases).
        if not Gazetteer([(entity, "x")]).mentions(text):
            self.stats["llm_entity_not_in_text"] += 1
            return None
        entry = self.index.lookup(entity)
        return _locate(text, entity, entry.type if entry else etype, entry)


ENTITY_BACKENDS.register("gazetteer", GazetteerFinder)
ENTITY_BACKENDS.register("column", ColumnFinder)
ENTITY_BACKENDS.register("llm", LLMFinder)


def make_finder(name: str, index: ImageIndex, **options):
    """Build a registered backend; ``options`` (``llm``, ``column``, ...) go to those that use them."""
    return ENTITY_BACKENDS.get(name)(index, **options)

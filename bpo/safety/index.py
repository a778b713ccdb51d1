"""The local image index: which image shows which entity.

The paper matched entities to Wikipedia / Knowledge-Graph thumbnails online; we read a curated local
file instead, so builds are offline and reproducible. Columns (CSV with a header, or JSONL/JSON):

    entity,type,image,aliases
    Glimmerstone Tower,LOC,glimmerstone_tower.png,Glimmerstone|the Glimmer Tower

``type`` is a CoNLL tag (PER, ORG, LOC, MISC; PERSON / ORGANIZATION / LOCATION are accepted too),
``image`` a path relative to the image root, ``aliases`` optional (``|``-separated in CSV, a list in
JSONL). Names compare case-insensitively with whitespace collapsed.

Validation: a missing image file is an error naming ``file:line``, or with ``on_error="skip"`` the
entry stays without an image (so the build counts its records as ``no_image``, not ``no_entity``); one
entity listed with two types is an error naming both lines, or with skip the entity is dropped (we
cannot tell which type is right); a path that escapes the image root is always an error. An alias
shared by two entities is dropped from both, with a warning.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bpo.data.images import resolve_image
from bpo.errors import BpoError, RecordError
from bpo.io import read_json_or_jsonl

ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
_TYPE_SYNONYMS = {"PERSON": "PER", "ORGANIZATION": "ORG", "ORGANISATION": "ORG", "LOCATION": "LOC"}


def normalize_type(value) -> str | None:
    """A CoNLL tag from user input (case-insensitive, long names accepted); ``None`` if unknown."""
    if not isinstance(value, str):
        return None
    tag = value.strip().upper()
    tag = _TYPE_SYNONYMS.get(tag, tag)
    return tag if tag in ENTITY_TYPES else None


def name_key(name: str) -> str:
    """How names are compared: case-folded, whitespace collapsed."""
    return " ".join(name.split()).casefold()


@dataclass(frozen=True)
class IndexEntry:
    entity: str
    type: str
    image: str | None  # relative to the image root; None when the file is missing (skip mode)
    aliases: tuple[str, ...] = ()
    where: str = "?"

    def names(self) -> tuple[str, ...]:
        return (self.entity, *self.aliases)


class ImageIndex:
    """Entries by name and alias, plus the problems found while loading (for the build report)."""

    def __init__(self, entries: list[IndexEntry], *, source: str = "?", problems: list[str] | None = None,
                 stats: Counter | None = None):
        self.source = source
        self.entries = entries
        self.problems = list(problems or [])
        self.stats = Counter(stats or {})
        self._by_name: dict[str, IndexEntry] = {}
        for e in entries:
            self._by_name[name_key(e.entity)] = e
        owners: dict[str, set[str]] = {}
        for e in entries:
            for alias in e.aliases:
                owners.setdefault(name_key(alias), set()).add(name_key(e.entity))
        self._alias: dict[str, IndexEntry] = {}
        for e in entries:
            kept = []
            for alias in e.aliases:
                k = name_key(alias)
                if k in self._by_name and self._by_name[k] is not e:
                    self._warn("alias_is_other_entity", f"{e.where}: alias {alias!r} of {e.entity!r} is also "
                               "an entity name; the entity wins")
                elif len(owners[k]) > 1:
                    self._warn("ambiguous_alias", f"{e.where}: alias {alias!r} is shared by "
                               f"{', '.join(sorted(owners[k]))}; dropped from all of them")
                else:
                    kept.append(alias)
                    self._alias[k] = e
            if len(kept) != len(e.aliases):
                self._replace(e, IndexEntry(e.entity, e.type, e.image, tuple(kept), e.where))

    def _warn(self, kind: str, message: str) -> None:
        self.stats[kind] += 1
        self.problems.append(message)

    def _replace(self, old: IndexEntry, new: IndexEntry) -> None:
        self.entries[self.entries.index(old)] = new
        self._by_name[name_key(new.entity)] = new
        for k, v in list(self._alias.items()):
            if v is old:
                self._alias[k] = new

    def lookup(self, name: str) -> IndexEntry | None:
        """The entry whose name or alias equals ``name`` (case-insensitive)."""
        k = name_key(name)
        return self._by_name.get(k) or self._alias.get(k)

    def __len__(self) -> int:
        return len(self.entries)

    def report(self) -> dict:
        return {"source": self.source, "entries": len(self.entries),
                "with_image": sum(1 for e in self.entries if e.image), **dict(self.stats),
                "problems": self.problems[:50]}


def _rows(path: Path) -> list[tuple[int, dict]]:
    if path.suffix.lower() == ".csv":
        import io

        from bpo.io import read_text

        # bpo.io.read_text: missing file, directory, permission and non-UTF-8 bytes are one-line errors.
        reader = csv.DictReader(io.StringIO(read_text(path, "image index"), newline=""))
        missing = [c for c in ("entity", "type", "image") if c not in (reader.fieldnames or [])]
        if missing:
            raise BpoError(f"{path}:1: missing column(s) {', '.join(missing)}; the header must be "
                           "entity,type,image[,aliases]")
        rows = []
        for row in reader:
            aliases = row.get("aliases") or ""
            row["aliases"] = [a for a in aliases.split("|")]
            rows.append((reader.line_num, row))
        return rows
    if not path.exists():
        raise BpoError(f"{path}: image index not found")
    return list(read_json_or_jsonl(path))


def _parse_entry(row: dict, where: str) -> IndexEntry:
    """Build one entry; schema errors raise RecordError."""
    entity = row.get("entity")
    if not isinstance(entity, str) or not entity.strip():
        raise RecordError("empty 'entity'", where=where)
    entity = " ".join(entity.split())
    etype = normalize_type(row.get("type"))
    if etype is None:
        raise RecordError(f"type {row.get('type')!r} of {entity!r} is not one of {', '.join(ENTITY_TYPES)}",
                          where=where)
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise RecordError(f"empty 'image' for {entity!r}", where=where)
    aliases = row.get("aliases") or []
    if isinstance(aliases, str):
        aliases = aliases.split("|")
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise RecordError(f"'aliases' of {entity!r} must be a list of strings", where=where)
    clean = []
    for a in aliases:
        a = " ".join(a.split())
        if a and name_key(a) != name_key(entity) and name_key(a) not in map(name_key, clean):
            clean.append(a)
    return IndexEntry(entity, etype, image.strip(), tuple(clean), where)


def load_index(path: str | os.PathLike, image_root: str | os.PathLike, *, on_error: str = "raise") -> ImageIndex:
    """Read and validate an image index (see the module docstring for the rules)."""
    if on_error not in ("raise", "skip"):
        raise BpoError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    if not Path(image_root).is_dir():
        raise BpoError(f"image root {image_root} is not a directory; pass --image-root DIR")
    skip = on_error == "skip"
    problems: list[str] = []
    stats: Counter = Counter()
    entries: dict[str, IndexEntry] = {}
    conflicted: set[str] = set()

    def problem(kind: str, err: RecordError) -> None:
        if not skip:
            raise err
        stats[kind] += 1
        problems.append(str(err))

    for lineno, row in _rows(path):
        where = f"{path}:{lineno}"
        try:
            entry = _parse_entry(row, where)
        except RecordError as exc:
            problem("invalid_row", exc)
            continue
        # Absolute or escaping paths are always fatal (not skippable): they point outside the data.
        exists = resolve_image(image_root, entry.image, where=where).is_file()
        key = name_key(entry.entity)
        if key in conflicted:
            stats["conflicting_type"] += 1
            continue
        prev = entries.get(key)
        if prev is not None and prev.type != entry.type:
            problem("conflicting_type", RecordError(
                f"entity {entry.entity!r} has type {entry.type} here but {prev.type} at {prev.where}; "
                "give one entity one type", where=where))
            conflicted.add(key)
            del entries[key]
            continue
        if prev is not None:
            # The paper keeps one image per entity: the first row wins, later ones are reported.
            stats["duplicate_entity"] += 1
            problems.append(f"{where}: {entry.entity!r} already listed at {prev.where}; keeping the first image")
            continue
        if not exists:
            problem("missing_image", RecordError(
                f"image {entry.image!r} for {entry.entity!r} not found under {Path(image_root).resolve()}; "
                "fix the path or run with --on-error skip", where=where))
            entry = IndexEntry(entry.entity, entry.type, None, entry.aliases, entry.where)
        entries[key] = entry
    if not entries:
        raise BpoError(f"{path}: no usable entries in the image index")
    return ImageIndex(list(entries.values()), source=str(path), problems=problems, stats=stats)

"""Check a record file and report *every* problem, each naming ``file:line`` and the record id.

Training and bootstrapping stop at the first bad record (``read_records``); this module is the
"tell me everything before I launch a 10-hour job" pass behind ``bpo data validate``. Problems are
:class:`~bpo.errors.RecordError` s with a ``severity``: ``error`` (the record cannot be used) or
``warning`` (usable but suspicious, e.g. a rejected answer identical to the chosen one).
"""

from __future__ import annotations

import os
from pathlib import Path

from bpo.data.images import load_image, resolve_image
from bpo.data.records import Record
from bpo.errors import RecordError
from bpo.io import read_jsonl

ERROR = "error"
WARNING = "warning"


class Problem(RecordError):
    """One validation finding; ``str()`` is ``file:line: record 'id': [warning: ]message``."""

    def __init__(self, message: str, *, where: str | None = None, record_id: str | None = None,
                 severity: str = ERROR):
        self.severity = severity
        shown = f"warning: {message}" if severity == WARNING else message
        super().__init__(shown, where=where, record_id=record_id)
        self.reason = message
        self.line = _line_of(where)

    @classmethod
    def from_error(cls, exc: RecordError, severity: str = ERROR) -> Problem:
        return cls(exc.reason, where=exc.where, record_id=exc.record_id, severity=severity)


def _line_of(where: str | None) -> int:
    tail = (where or "").rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


class Problems(list):
    """The list of :class:`Problem` s, plus how many records were read."""

    n_records: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self if p.severity == WARNING]

    def summary(self, path: str | os.PathLike) -> str:
        bad = len({p.line for p in self.errors})
        if not self:
            return f"{path}: {self.n_records} record(s), no problems"
        return (f"{path}: {self.n_records} record(s) read; {len(self.errors)} error(s) in {bad} line(s), "
                f"{len(self.warnings)} warning(s)")


def _norm(text: str) -> str:
    return " ".join(text.split())


class _ImageChecker:
    """Checks image paths under one root, decoding each distinct file once (images are shared)."""

    def __init__(self, root: str | os.PathLike | None, decode: bool):
        self.root = root
        self.decode = decode
        self._cache: dict[str, str | None] = {}

    def problem(self, rel: str) -> str | None:
        if rel not in self._cache:
            self._cache[rel] = self._check(rel)
        return self._cache[rel]

    def _check(self, rel: str) -> str | None:
        try:
            if not self.decode:
                if self.root is None:
                    return _syntactic_path_problem(rel)
                resolve_image(self.root, rel)
            else:
                load_image(self.root, rel)
        except RecordError as exc:
            return exc.reason
        return None


def _syntactic_path_problem(rel: str) -> str | None:
    """Without an image root we can still refuse absolute paths and ``..`` escapes."""
    if os.path.isabs(rel):
        return f"image path {rel!r} is absolute; make it relative to the image root"
    if os.path.normpath(rel).split(os.sep)[0] == "..":
        return f"image path {rel!r} escapes the image root; keep images inside it"
    return None


def _raw_images(obj: dict) -> list[str]:
    imgs = obj.get("images", [])
    if isinstance(imgs, str):
        imgs = [imgs]
    return [x for x in imgs if isinstance(x, str) and x] if isinstance(imgs, list) else []


def _check_record(obj: dict, where: str, *, require_rejected: bool, images: _ImageChecker,
                  seen: dict[str, int], lineno: int) -> list[Problem]:
    """All problems of one parsed JSON object (schema, duplicate id, images, rejected)."""
    out: list[Problem] = []
    rid = obj.get("id")
    rid = None if rid is None or (isinstance(rid, str) and not rid.strip()) else str(rid)
    if rid is not None:
        if rid in seen:
            out.append(Problem(f"duplicate id (first seen at line {seen[rid]}); ids must be unique within a file",
                               where=where, record_id=rid))
        else:
            seen[rid] = lineno
    rec = None
    try:
        rec = Record.from_dict(obj, where=where)
    except RecordError as exc:
        out.append(Problem.from_error(exc))
    # Images are checked even when the schema failed, so one run shows the whole picture.
    for rel in (rec.images if rec else _raw_images(obj)):
        msg = images.problem(rel)
        if msg:
            out.append(Problem(msg, where=where, record_id=rid))
    if rec is None:
        return out
    if require_rejected and not rec.rejected:
        out.append(Problem("no rejected response; training needs at least one (generate negatives with "
                           "`bpo bootstrap` or drop --require-rejected for SFT data)", where=where, record_id=rid))
    chosen = _norm(rec.chosen)
    for j, neg in enumerate(rec.rejected):
        if _norm(neg.text) == chosen:
            out.append(Problem(f"rejected[{j}] ({neg.source}) is identical to chosen; the pair teaches nothing",
                               where=where, record_id=rid, severity=WARNING))
    return out


def identical_pairs(records) -> list[str]:
    """``where: record 'id': rejected[j]`` for each rejected answer equal to its chosen one (same test as validate)."""
    out = []
    for rec in records:
        chosen = _norm(rec.chosen)
        out += [f"{rec.meta.get('_where', '?')}: record {rec.id!r}: rejected[{j}] ({neg.source})"
                for j, neg in enumerate(rec.rejected) if _norm(neg.text) == chosen]
    return out


def validate_file(path: str | os.PathLike, image_root: str | os.PathLike | None, *, require_rejected: bool,
                  check_images: bool = True) -> Problems:
    """Every problem in a record JSONL file, in line order.

    ``check_images`` opens and fully decodes each image (PIL ``load``), so a truncated file is found
    here and not mid-training; without it only the path form is checked (absolute, escaping root).
    """
    path = Path(path)
    problems = Problems()
    bad_lines: list[RecordError] = []
    images = _ImageChecker(image_root, decode=check_images)
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path, skip_bad=True, errors=bad_lines):
        problems.n_records += 1
        problems.extend(_check_record(obj, f"{path}:{lineno}", require_rejected=require_rejected,
                                      images=images, seen=seen, lineno=lineno))
    problems.extend(Problem.from_error(e) for e in bad_lines)
    if not problems.n_records and not bad_lines:
        problems.append(Problem("the file is empty: no records (a record file has one JSON object per line)",
                                where=f"{path}:1"))
    problems.sort(key=lambda p: p.line)  # stable: per-line order of checks is kept
    return problems

"""Atomic file writes and line-numbered JSONL reading."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bpo.errors import BpoError, RecordError


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    A reader never sees a half-written file and a killed writer leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs follow the user's umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike, *, skip_bad: bool = False,
               errors: list | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, obj)`` for each non-empty line.

    A malformed line raises :class:`RecordError` naming ``file:line``; with ``skip_bad`` it is
    appended to ``errors`` instead. A truncated last line (a writer killed mid-line) is treated the
    same way, so append-only shards stay readable after a crash.
    """
    path = Path(path)
    if not path.exists():
        raise BpoError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                err = RecordError(f"malformed JSON ({exc.msg} at column {exc.colno}); fix or delete this line",
                                  where=f"{path}:{lineno}")
                if skip_bad:
                    if errors is not None:
                        errors.append(err)
                    continue
                raise err from None
            if not isinstance(obj, dict):
                err = RecordError("expected a JSON object per line", where=f"{path}:{lineno}")
                if skip_bad:
                    if errors is not None:
                        errors.append(err)
                    continue
                raise err
            yield lineno, obj


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing file or bad JSON is a one-line error naming the file (and line)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BpoError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise BpoError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


def read_json_or_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Read a ``.json`` list (line numbers become 1-based list indices) or a JSONL file."""
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            data = [data]
        for i, obj in enumerate(data, 1):
            if not isinstance(obj, dict):
                raise RecordError("expected a JSON object", where=f"{path}[{i}]")
            yield i, obj
    else:
        yield from read_jsonl(path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            buf = fh.read(chunk)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object with sorted keys (cache keys, fingerprints)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class AppendOnlyJsonl:
    """An append-only JSONL shard for resumable jobs.

    Each row is written as one ``write`` of a full line followed by flush + fsync, so a kill leaves at
    most one partial last line, which :meth:`done_ids` ignores (and :meth:`repair` truncates).
    """

    def __init__(self, path: str | os.PathLike, id_key: str = "id"):
        self.path = Path(path)
        self.id_key = id_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair()
        self._fh = open(self.path, "a", encoding="utf-8")

    def repair(self) -> None:
        """Drop a trailing partial line left by a killed writer."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)

    def done_ids(self) -> set[str]:
        ids: set[str] = set()
        if not self.path.exists():
            return ids
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                try:
                    ids.add(str(json.loads(line)[self.id_key]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        return ids

    def append(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class KeyedJsonlCache:
    """A disk cache of ``{"key": ..., **value}`` rows in an append-only JSONL file (judge answers etc.).

    Rows are loaded at start; ``keep(row)`` decides which cached rows count (a subclass tightens it,
    e.g. only parsed verdicts). A crash can leave a partial last line: it is skipped, not fatal.
    Appends are line-atomic and thread-safe.
    """

    def __init__(self, path: str | os.PathLike):
        import threading

        self.path = Path(path)
        self._rows: dict[str, dict] = {}
        self._writer: AppendOnlyJsonl | None = None
        self._lock = threading.Lock()
        if self.path.exists():
            for _, row in read_jsonl(self.path, skip_bad=True, errors=[]):
                if isinstance(row.get("key"), str) and self.keep(row):
                    self._rows[row["key"]] = row

    def keep(self, row: dict) -> bool:
        return True

    def get(self, key: str) -> dict | None:
        return self._rows.get(key)

    def put(self, key: str, row: dict) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = AppendOnlyJsonl(self.path, id_key="key")
            full = {"key": key, **row}
            self._writer.append(full)
            self._rows[key] = full

    def __len__(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

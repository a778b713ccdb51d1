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


def _check_readable(path: Path, what: str = "file") -> None:
    """One-line errors for the usual reasons a file cannot be read (before it is opened)."""
    if not path.exists():
        raise BpoError(f"{path}: {what} not found")
    if path.is_dir():
        raise BpoError(f"{path}: is a directory; pass the {what} inside it")
    if not os.access(path, os.R_OK):
        raise BpoError(f"{path}: permission denied; make it readable (chmod +r) or pass another path")


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise BpoError(f"{path}: cannot read ({exc.strerror})") from None


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BpoError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                       "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text  # a BOM is not content


def iter_lines(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 text file, gzipped or not (detected by content).

    Every way the file can fail to be read (missing, a directory, no permission, not UTF-8, a broken
    gzip stream) is a one-line :class:`BpoError` naming the file, and the line where there is one.
    """
    import gzip
    import zlib

    path = Path(path)
    _check_readable(path, what)
    opener = gzip.open if _is_gzip(path) else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, _decode(raw, path, lineno)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise BpoError(f"{path}:{lineno + 1}: broken gzip data ({exc}); re-download or re-compress the file") from None
    except OSError as exc:
        raise BpoError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The whole text of a file with :func:`iter_lines`' error rules (``.gz`` read transparently)."""
    return "".join(line for _, line in iter_lines(path, what))


def _first_char(path: Path, what: str) -> str:
    for _, line in iter_lines(path, what):
        stripped = line.strip()
        if stripped:
            return stripped[0]
    return ""


def read_jsonl(path: str | os.PathLike, *, skip_bad: bool = False,
               errors: list | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, obj)`` for each non-empty line.

    A malformed line raises :class:`RecordError` naming ``file:line``; with ``skip_bad`` it is
    appended to ``errors`` instead. A truncated last line (a writer killed mid-line) is treated the
    same way, so append-only shards stay readable after a crash. A file that holds one JSON list
    instead (detected by content, whatever its name) yields its elements, numbered from 1.
    """
    path = Path(path)
    if _first_char(path, "file") == "[":
        yield from _json_list_items(path, read_json(path), skip_bad, errors)
        return
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ("this looks like one pretty-printed JSON document, not JSON Lines; write one object per line"
                    if lineno == 1 and line.strip() == "{" else "fix or delete this line")
            err = RecordError(f"malformed JSON ({exc.msg} at column {exc.colno}); {hint}", where=f"{path}:{lineno}")
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


def _json_list_items(path: Path, data: Any, skip_bad: bool, errors: list | None) -> Iterator[tuple[int, dict]]:
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise BpoError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            err = RecordError("expected a JSON object", where=f"{path}[{i}]")
            if not skip_bad:
                raise err
            if errors is not None:
                errors.append(err)
            continue
        yield i, obj


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing file or bad JSON is a one-line error naming the file (and line).

    A file that holds JSON Lines instead (what ``datasets.Dataset.to_json`` writes, even to ``x.json``)
    is read as the list of its lines' objects.
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            try:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError:
                pass
        raise BpoError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); fix the file "
                       "(one JSON document, or JSON Lines: one object per line)") from None


def read_json_or_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Read a JSON list (line numbers become 1-based list indices) or a JSONL file, told apart by content."""
    path = Path(path)
    first = _first_char(path, "file")
    if first == "[":
        yield from _json_list_items(path, read_json(path), False, None)
        return
    if first == "{":
        # One object per line, or one pretty-printed object: the first line decides.
        for _, line in iter_lines(path):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    yield from _json_list_items(path, read_json(path), False, None)
                    return
                break
    yield from read_jsonl(path)


def load_tensors(path: str | os.PathLike, what: str = "checkpoint file") -> Any:
    """``torch.load(weights_only=True)`` whose refusal of a pickle is one line, without torch's advice.

    torch's UnpicklingError text suggests ``weights_only=False``, i.e. running the file's code; bpo never
    does that, so the message says what the file is and how to replace it instead.
    """
    import pickle

    import torch

    path = Path(path)
    _check_readable(path, what)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise pickled_weights_error(path, what, exc) from None


def pickled_weights_error(path: str | os.PathLike, what: str, exc: BaseException | None = None) -> BpoError:
    import pickle

    if exc is not None and not isinstance(exc, pickle.UnpicklingError):
        return BpoError(f"{path}: unreadable {what} ({type(exc).__name__}); it is truncated or not a torch file: "
                        "re-create it (for a checkpoint: run.resume=none)")
    return BpoError(f"{path}: this {what} holds pickled Python objects, which bpo never loads (unpickling can run "
                    "code); use a safetensors file (safetensors.torch.save_file) or re-create it with bpo")


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

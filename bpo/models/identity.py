"""What identifies a model's weights: content hashes of a local directory, or a hub id and commit.

Used wherever a cached result must not outlive the weights that made it: the reference log-prob cache
(:mod:`bpo.train.ref_cache`) and the fingerprints of resumable generation jobs (a retrained adapter
written to the same path must not resume the old adapter's answers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bpo.io import atomic_write, file_sha256, stable_hash
from bpo.paths import cache_dir


def _hash_memo_path() -> Path:
    return cache_dir("file_hashes") / "sha256.json"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content, memoised by (path, size, mtime, inode) so large weights hash once.

    The fingerprint depends on content only; the stat tuple just avoids re-reading 14 GB each run.
    """
    p = Path(path).resolve()
    st = p.stat()
    stamp = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo_file = _hash_memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    digest = file_sha256(p)
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{p}|")}
    memo[stamp] = digest
    with atomic_write(memo_file) as fh:
        json.dump(memo, fh)
    return digest


def dir_digest(path: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every regular, non-hidden file under ``path``."""
    root = Path(path)
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = file_digest(f)
    return out


def model_identity(name: str, model=None) -> dict:
    """Local directory -> content hashes of its files; hub id -> id + resolved commit."""
    if os.path.isdir(os.path.expanduser(name)):
        return {"files": dir_digest(os.path.expanduser(name))}
    config = getattr(model, "config", None)
    return {"hub_id": name, "commit": getattr(config, "_commit_hash", None)}


def weights_fingerprint(model: str | None, adapter: str | None = None) -> dict:
    """Short content identities of ``model`` and ``adapter`` (empty for what is not given)."""
    out = {}
    if model:
        out["model_files"] = stable_hash(model_identity(model))[:16]
    if adapter:
        out["adapter_files"] = stable_hash(model_identity(adapter))[:16]
    return out

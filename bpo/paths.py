"""The one base-dir resolver: every default location is derived from here.

``BPO_HOME`` overrides the base directory; otherwise ``~/.cache/bpo``. Nothing in the project uses
an absolute path of its own.
"""

from __future__ import annotations

import os
from pathlib import Path


def base_dir() -> Path:
    """Root for caches (toy models, reference log-probs, judge caches)."""
    env = os.environ.get("BPO_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "bpo"
    return root


def cache_dir(kind: str) -> Path:
    """A sub-directory of the base dir for one kind of cache (created on demand)."""
    path = base_dir() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_file(*parts: str) -> Path:
    """A data file shipped inside the ``bpo`` package (templates, word lists)."""
    return Path(__file__).resolve().parent.joinpath(*parts)

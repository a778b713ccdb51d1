"""Image paths stay inside the image root; images load with a clear error naming the record."""

from __future__ import annotations

import os
from pathlib import Path

from bpo.data.records import record_where
from bpo.errors import RecordError


def resolve_image(root: str | os.PathLike | None, rel: str, *, record_id: str | None = None,
                  where: str | None = None) -> Path:
    """Resolve ``rel`` under ``root``; refuse absolute paths and ``..`` escapes (after symlinks)."""
    if root is None:
        raise RecordError(f"image {rel!r} given but no image root; pass --image-root DIR",
                          where=where, record_id=record_id)
    root_p = Path(root).resolve()
    if os.path.isabs(rel):
        raise RecordError(f"image path {rel!r} is absolute; make it relative to the image root {root_p}",
                          where=where, record_id=record_id)
    full = (root_p / rel).resolve()
    if full != root_p and root_p not in full.parents:
        raise RecordError(f"image path {rel!r} escapes the image root {root_p}; keep images inside it",
                          where=where, record_id=record_id)
    return full


def load_image(root: str | os.PathLike | None, rel: str, *, record_id: str | None = None,
               where: str | None = None):
    """Open and decode an image as RGB (decoding fully, so a corrupt file fails here, not mid-batch)."""
    from PIL import Image, UnidentifiedImageError

    path = resolve_image(root, rel, record_id=record_id, where=where)
    if not path.is_file():
        raise RecordError(f"image {rel!r} not found under {Path(root).resolve()}", where=where, record_id=record_id)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RecordError(f"image {rel!r} is corrupt or not an image ({type(exc).__name__}); replace or drop it",
                          where=where, record_id=record_id) from None


def load_record_images(rec, root) -> list:
    return [load_image(root, rel, record_id=rec.id, where=record_where(rec)) for rel in rec.images]

"""Shared fixtures for the data tests: tiny PNGs made with PIL, JSONL writers."""

from __future__ import annotations

import io
import json

import pytest


def png_bytes(color=(200, 30, 30), size=(4, 4)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def make_png():
    """``make_png(path, color)`` writes a tiny valid PNG and returns its bytes."""

    def _make(path, color=(200, 30, 30)):
        data = png_bytes(color)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    return _make


@pytest.fixture
def write_lines():
    """``write_lines(path, rows)``: dict rows become JSON lines, str rows are written verbatim."""

    def _write(path, rows):
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                        encoding="utf-8")
        return path

    return _write


@pytest.fixture
def png_data():
    """The :func:`png_bytes` factory (encoded PNG bytes for embedded-image rows)."""
    return png_bytes

"""Shared fixtures for the bootstrap tests: tiny local models (built once per session), images, records."""

from __future__ import annotations

import pytest
from bootstrap_helpers import record


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> str:
    from bpo.models.tiny import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> str:
    from bpo.models.tiny import build_tiny_qwen2vl

    return str(build_tiny_qwen2vl(tmp_path_factory.mktemp("qwen")))


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> str:
    """PNGs of different sizes and colours, plus a corrupt ``bad.png``."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for i in range(6):
        Image.new("RGB", (40 + 9 * i, 30 + 5 * i), (30 * i, 200 - 25 * i, 90)).save(root / f"{i}.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return str(root)


@pytest.fixture(scope="session")
def llava_engine(tiny_llava, image_root):
    from bpo.models.generation import build_hf_engine

    return build_hf_engine(tiny_llava, image_root=image_root, batch_size=8)


@pytest.fixture(scope="session")
def qwen_engine(tiny_qwen, image_root):
    from bpo.models.generation import build_hf_engine

    return build_hf_engine(tiny_qwen, image_root=image_root, batch_size=8)


@pytest.fixture
def records():
    """Three parsed records with images of different sizes and prompts of different lengths."""
    from bpo.data.records import Record

    rows = [record("r0", "0.png", "Describe the image."),
            record("r1", "1.png", "What color is the car on the left side of the street?"),
            record("r2", "2.png", "How many people are there?")]
    return [Record.from_dict(r) for r in rows]

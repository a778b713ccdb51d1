"""Shared fixtures: tiny models, tokenizers and images built locally (no downloads)."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Tiny models on a 2-core CI box: thread hand-offs cost more than they save, and tests run beside
    # other processes. One thread also makes timings and results steadier.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_bpo_home(tmp_path_factory, monkeypatch):
    # Caches (reference log-probs, judge answers, toy models) must not leak between tests or into ~.
    monkeypatch.setenv("BPO_HOME", str(tmp_path_factory.getbasetemp() / "bpo_home"))


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from bpo.models.tiny import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny_llava")))


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory):
    from bpo.models.tiny import build_tiny_qwen2vl

    return str(build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl")))


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    colors = {"red.png": (220, 20, 20), "green.png": (20, 200, 40), "blue.png": (30, 40, 230)}
    for name, rgb in colors.items():
        img = Image.new("RGB", (40, 32), rgb)
        for x in range(8, 20):
            for y in range(8, 20):
                img.putpixel((x, y), (255, 255, 255))
        img.save(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return str(root)


def make_record(rid, image, question, chosen, rejected, history=None):
    prompt = list(history or [])
    content = [{"type": "image"}, {"type": "text", "text": question}] if image else question
    if history and image:
        # image in the first user turn, as in multi-turn LLaVA data
        prompt[0] = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt[0]["content"]}]}
        content = question
    prompt.append({"role": "user", "content": content})
    return {"id": rid, "images": [image] if image else [], "prompt": prompt, "chosen": chosen,
            "rejected": [{"text": t, "source": s} for s, t in rejected]}


PREF_ROWS = [
    make_record("r1", "red.png", "describe the image", "a red square with a white center",
                [("weakened", "a blue circle on the left"), ("injected", "two green dogs")]),
    make_record("r2", "green.png", "what color is it?", "green",
                [("weakened", "red")]),
    make_record("r3", "blue.png", "more?", "a blue square",
                [("blind", "I cannot see any image"), ("injected", "a yellow star"), ("weakened", "a cat")],
                history=[{"role": "user", "content": "what is it?"}, {"role": "assistant", "content": "a shape"}]),
    make_record("r4", "red.png", "is there a horse?", "no , there is not",
                [("weakened", "yes , there is a horse")]),
]


@pytest.fixture
def pref_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PREF_ROWS))
    return str(path)




@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """``tiny_family(name) -> str``: a hub-shaped tiny model folder of a family, built once per session."""
    from bpo.models.families import build_tiny

    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = str(build_tiny(name, tmp_path_factory.mktemp(f"family_{name}")))
        return built[name]

    return get


def free_port() -> int:
    """A free TCP port on loopback for a two-process launch: torchrun's default 29500 collides when two test
    runs (or a user's job) launch at once on one machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

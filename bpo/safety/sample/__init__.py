"""The bundled Blind-PO sample: invented entities, HH-style pairs and PIL-drawn images.

``write_sample(out)`` writes ``out/pairs.jsonl`` (Anthropic-HH strings, one generic row),
``out/index.csv`` and ``out/images/*.png``, so ``docs/blind_po.md`` can be followed offline. The text
lives in ``data.json``; the pictures are simple shapes drawn here (never photos of real people), so the
package ships no binary files and the output is the same on every run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from bpo.io import atomic_write, write_jsonl
from bpo.paths import package_file

SIZE = 64


def load_sample() -> dict:
    return json.loads(package_file("safety", "sample", "data.json").read_text(encoding="utf-8"))


def hh_string(turns: list[str]) -> str:
    """Alternating Human/Assistant turns in the HH-RLHF layout (``\\n\\nHuman: ...``)."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def pair_rows(data: dict) -> list[dict]:
    rows = []
    for p in data["pairs"]:
        turns = [*p.get("history", []), p["user"]]
        if p.get("generic"):
            rows.append({"prompt": p["user"], "chosen": p["chosen"], "rejected": p["rejected"]})
        else:
            rows.append({"chosen": hh_string([*turns, p["chosen"]]), "rejected": hh_string([*turns, p["rejected"]])})
    return rows


def draw(kind: str, color: tuple[int, int, int]):
    """A 64x64 pictogram of one kind of thing (person, logo, tower, ...)."""
    from PIL import Image, ImageDraw

    bg = {"lake": (90, 160, 80), "harbour": (170, 210, 240), "tower": (180, 215, 245)}.get(kind, (245, 245, 240))
    im = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(im)
    if kind == "person":
        d.ellipse((22, 6, 42, 26), fill=(235, 200, 170))
        d.rounded_rectangle((16, 28, 48, 62), radius=8, fill=color)
    elif kind == "logo":
        d.polygon([(32, 6), (58, 32), (32, 58), (6, 32)], fill=color)
        d.ellipse((22, 22, 42, 42), fill=(255, 255, 255))
    elif kind == "newspaper":
        d.rectangle((10, 8, 54, 56), fill=(250, 250, 250), outline=color)
        d.rectangle((14, 12, 50, 20), fill=color)
        for y in range(26, 54, 6):
            d.line((14, y, 50, y), fill=(120, 120, 120))
    elif kind == "tower":
        d.rectangle((24, 10, 40, 63), fill=color)
        d.polygon([(22, 10), (32, 0), (42, 10)], fill=(120, 60, 60))
        for y in range(16, 60, 8):
            d.rectangle((29, y, 35, y + 4), fill=(250, 230, 120))
    elif kind == "lake":
        d.ellipse((6, 18, 58, 50), fill=color)
    elif kind == "harbour":
        d.rectangle((0, 40, 63, 63), fill=color)
        d.polygon([(18, 38), (46, 38), (40, 46), (24, 46)], fill=(140, 80, 40))
        d.line((32, 14, 32, 38), fill=(60, 60, 60), width=2)
        d.polygon([(33, 14), (33, 34), (46, 34)], fill=(250, 250, 250))
    elif kind == "gadget":
        d.rounded_rectangle((14, 14, 50, 50), radius=6, fill=color)
        d.ellipse((22, 22, 30, 30), fill=(30, 30, 30))
        d.ellipse((34, 22, 42, 30), fill=(30, 30, 30))
        d.line((32, 4, 32, 14), fill=(30, 30, 30), width=2)
    else:
        raise ValueError(f"unknown sample image kind {kind!r}")
    return im


def write_sample(out: str | os.PathLike) -> dict[str, Path]:
    """Write the sample under ``out``; returns the paths of the pairs file, index, image root."""
    out = Path(out)
    data = load_sample()
    images = out / "images"
    for name, spec in data["images"].items():
        buf = io.BytesIO()
        draw(spec["kind"], tuple(spec["color"])).save(buf, format="PNG", optimize=True)
        with atomic_write(images / name, "wb") as fh:
            fh.write(buf.getvalue())
    with atomic_write(out / "index.csv") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["entity", "type", "image", "aliases"])
        for e in data["index"]:
            writer.writerow([e["entity"], e["type"], e["image"], "|".join(e["aliases"])])
    write_jsonl(out / "pairs.jsonl", pair_rows(data))
    return {"pairs": out / "pairs.jsonl", "index": out / "index.csv", "image_root": images}

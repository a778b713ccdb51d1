"""Helpers shared by the bootstrap tests (a module with a unique name, so importing it cannot clash
with another directory's conftest)."""

from __future__ import annotations

import json


def record(rid: str, image: str | None, question: str, chosen: str = "A red square on a table.", **extra) -> dict:
    content = [{"type": "image"}, {"type": "text", "text": question}] if image else question
    row = {"id": rid, "images": [image] if image else [], "prompt": [{"role": "user", "content": content}],
           "chosen": chosen}
    row.update(extra)
    return row


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

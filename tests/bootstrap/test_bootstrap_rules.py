"""Rule-based error injection: each edit type, determinism, and the CLI path."""

import json
import random

from bpo.bootstrap.rules import RuleBackend
from bpo.cli import main as cli
from bpo.data.records import Record
from bpo.models.generation import SamplingSettings


def test_each_edit_type_is_offered():
    b = RuleBackend(SamplingSettings(seed=0))
    answer = "Two dogs sit to the left of a red car."
    edits = b.edits(answer, random.Random(0))
    assert any("car" not in e.lower() and "dog" in e.lower() for e in edits)  # car replaced by another object
    assert any(e.startswith("Three dogs") or e.startswith("One dogs") for e in edits)  # count
    assert any("to the right of" in e for e in edits)  # relation
    assert any("red" not in e and "car" in e for e in edits)  # colour
    assert answer not in edits


def test_plural_object_kept_plural_with_custom_vocab(tmp_path):
    vocab = tmp_path / "v.json"
    vocab.write_text(json.dumps({"red circle": ["red circles"], "blue square": ["blue squares"]}))
    b = RuleBackend(SamplingSettings(seed=0), str(vocab))
    edits = b.edits("two red circles .", random.Random(0))
    assert "two blue squares ." in edits
    # colour edits stay inside the vocabulary's colours (red <-> blue here)
    assert "two blue circles ." in edits and not any("green" in e or "orange" in e for e in edits)


def test_deterministic_and_attempt_dependent():
    b = RuleBackend(SamplingSettings(seed=3))
    a = "A man rides a horse next to a dog on the left."
    assert b.rewrite("r1\x1fattempt=0", a) == b.rewrite("r1\x1fattempt=0", a)
    outs = {b.rewrite(f"r1\x1fattempt={k}", a) for k in range(6)}
    assert len(outs) > 1 and a not in outs
    assert b.rewrite("k", "nothing to change here") == ""  # -> rejected as empty, recorded, retried


def test_cli_inject_rules(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [Record(id="a", prompt=[{"role": "user", "content": "describe"}], chosen="a cat on the left").to_dict(),
            Record(id="b", prompt=[{"role": "user", "content": "describe"}], chosen="hello there").to_dict()]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert cli(["bootstrap", "inject", "--backend", "rules", "--data", str(src), "--out", str(out),
                "--no-progress", "--retries", "1"]) == 0
    got = {json.loads(line)["id"]: json.loads(line) for line in out.read_text().splitlines()}
    neg = got["a"]["rejected"][0]
    assert neg["source"] == "injected" and neg["text"] != "a cat on the left" and neg["meta"]["backend"] == "rules"
    assert got["b"]["rejected"] == [] and [r["reason"] for r in got["b"]["meta"]["rejections"]] == ["empty", "empty"]

"""A record the chat template rejects is a record error in ``bpo train``: named by file:line and id, found before
the model loads, skipped with ``data.on_error=skip``."""

from __future__ import annotations

import json

from bpo.cli import main as cli

OK = {"id": "ok", "images": ["red.png"], "chosen": "red", "rejected": [{"text": "blue", "source": "weakened"}],
      "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color ?"}]}]}
# Gemma 3's template raises on two user turns in a row ("Conversation roles must alternate").
BAD = {"id": "twice", "images": [], "chosen": "yes", "rejected": [{"text": "no", "source": "weakened"}],
       "prompt": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}
# LLaVA-NeXT's template crashes on a string assistant turn unless bpo converts it (it does).
STRING_TURN = {"id": "history", "images": [], "chosen": "a square", "rejected": [{"text": "a cat", "source": "blind"}],
               "prompt": [{"role": "user", "content": "what is it ?"}, {"role": "assistant", "content": "a shape"},
                          {"role": "user", "content": "more ?"}]}


def _base(model, data, image_root, out):
    return [f"model.name={model}", f"data.train={data}", f"data.image_root={image_root}", f"run.output_dir={out}",
            "run.max_steps=1", "run.progress=false", "run.tensorboard=false", "lora.r=2", "data.max_length=1024"]


def test_template_failure_is_named_and_skippable(tiny_family, image_root, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (OK, BAD, STRING_TURN)))
    base = _base(tiny_family("gemma3"), data, image_root, tmp_path / "out")
    assert cli(["train", *base]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]  # (earlier lines: the fixture build progress)
    assert err.startswith("error: ")
    assert "d.jsonl:2" in err and "twice" in err and "alternate" in err, err
    assert "trainable" not in captured.out  # failed before the model was loaded
    assert cli(["train", *base, "data.on_error=skip"]) == 0
    assert "trainable" in capsys.readouterr().out  # (the check above can fail)
    dropped = (tmp_path / "out" / "dropped.txt").read_text()
    assert "twice" in dropped and "d.jsonl:2" in dropped and "history" not in dropped and "'ok'" not in dropped


def test_string_assistant_turn_trains_on_llava_next(tiny_family, image_root, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (OK, STRING_TURN)))
    assert cli(["train", *_base(tiny_family("llava_next"), data, image_root, tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "dropped.txt").exists() or not (tmp_path / "out" / "dropped.txt").read_text()

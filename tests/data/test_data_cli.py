"""`bpo data validate | import | stats` through the real dispatcher: exit codes and output lines."""

from __future__ import annotations

import json

import pytest

from bpo.cli import main


def rec(rid, image="good.png", chosen="A red square.", rejected=("A blue circle.",)):
    return {"id": rid, "images": [image],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
            "chosen": chosen, "rejected": [{"text": t, "source": "weakened"} for t in rejected]}


@pytest.fixture
def root(tmp_path, make_png):
    make_png(tmp_path / "img" / "good.png")
    return tmp_path / "img"


def test_validate_errors_exit_1_one_line_each(tmp_path, root, write_lines, capsys):
    path = write_lines(tmp_path / "r.jsonl", [rec("a"), rec("b", image="gone.png"), "not json",
                                              rec("c", rejected=())])
    assert main(["data", "validate", str(path), "--image-root", str(root), "--require-rejected"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:2: record 'b': image 'gone.png' not found under")
    assert out[1].startswith(f"{path}:3: malformed JSON")
    assert out[2].startswith(f"{path}:4: record 'c': no rejected response")
    assert out[3] == f"{path}: 3 record(s) read; 3 error(s) in 3 line(s), 0 warning(s)"
    assert len(out) == 4


def test_validate_clean_and_warning_only_exit_0(tmp_path, root, write_lines, capsys):
    path = write_lines(tmp_path / "r.jsonl", [rec("a"), rec("b", rejected=("A red square.",))])
    assert main(["data", "validate", str(path), "--image-root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}:2: record 'b': warning: rejected[0] (weakened) is identical to chosen; "
                   "the pair teaches nothing",
                   f"{path}: 2 record(s) read; 0 error(s) in 0 line(s), 1 warning(s)"]


def test_validate_needs_image_root_unless_no_image_check(tmp_path, write_lines, capsys):
    path = write_lines(tmp_path / "r.jsonl", [rec("a", image="../x.png")])
    assert main(["data", "validate", str(path)]) == 2
    assert "pass --image-root DIR" in capsys.readouterr().err
    assert main(["data", "validate", str(path), "--no-image-check"]) == 1
    assert "escapes the image root" in capsys.readouterr().out


def test_import_prints_counts_and_skip_reasons(tmp_path, write_lines, capsys):
    rows = [{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nQ1"},
                                                          {"from": "gpt", "value": "A1"},
                                                          {"from": "human", "value": "Q2"},
                                                          {"from": "gpt", "value": "A2"}]},
            {"id": 2, "image": "b.jpg", "conversations": [{"from": "human", "value": "no marker"},
                                                          {"from": "gpt", "value": "A"}]},
            {"id": 3, "image": "c.jpg", "conversations": [{"from": "human", "value": "also none"},
                                                          {"from": "gpt", "value": "A"}]}]
    src = write_lines(tmp_path / "llava.jsonl", rows)
    out_path = tmp_path / "out" / "sft.jsonl"
    argv = ["data", "import", str(src), "--out", str(out_path), "--on-error", "skip", "--split-turns"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"imported 2 record(s) from 3 row(s) of {src} (format llava_sft) -> {out_path}"
    assert out[1] == "skipped 2 row(s):"
    assert out[2] == (f"  2 x 1 image(s) but 0 <image> marker(s) in the conversation; they must match "
                      f"(first: {src}:2)")
    got = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["id"] for r in got] == ["1-t1", "1-t2"] and got[1]["chosen"] == "A2"


def test_import_raise_mode_is_one_line_error_exit_2(tmp_path, write_lines, capsys):
    src = write_lines(tmp_path / "b.jsonl", [{"id": "g", "prompt": "Q <image>", "image": "x.jpg",
                                              "completions": [{"score": 0, "response": "a", "type": "llm-hal"}]}])
    assert main(["data", "import", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}:1: record 'g': all 1 completion(s) have score 0")
    assert "\n" not in err and not (tmp_path / "o.jsonl").exists()


def test_import_embedded_images_then_validate(tmp_path, write_lines, png_data, capsys):
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png_data()).decode()
    src = write_lines(tmp_path / "t.jsonl", [{"id": "e", "prompt": "Q", "chosen": "a", "rejected": "b",
                                              "images": [uri]}])
    out_path, img = tmp_path / "o.jsonl", tmp_path / "imgs"
    assert main(["data", "import", str(src), "--format", "trl", "--out", str(out_path),
                 "--image-out", str(img)]) == 0
    assert f"images written to {img}: 1 (use it as --image-root)" in capsys.readouterr().out
    assert main(["data", "validate", str(out_path), "--image-root", str(img), "--require-rejected"]) == 0


def test_stats_text_and_json(tmp_path, write_lines, capsys):
    path = write_lines(tmp_path / "r.jsonl", [rec("a"), rec("b", chosen="one two"), "{bad"])
    assert main(["data", "stats", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "records: 2" in out and "  weakened: 2" in out
    assert out[-1] == f"skipped 1 invalid line(s); run `bpo data validate {path}` for details"
    assert main(["data", "stats", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    # chosen lengths: "A red square." = 3 words, "one two" = 2 -> mean 2.5, max 3.
    assert s["records"] == 2 and s["invalid_lines"] == 1
    assert s["words"]["chosen"] == {"n": 2, "mean": 2.5, "median": 2.5, "max": 3}


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["data", "import", "x.jsonl"]) == 2  # --out missing: a one-line error
    assert capsys.readouterr().err.strip() == "error: bpo data import: missing --out (or out=...)"
    assert main(["data", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err

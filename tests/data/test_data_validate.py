"""validate_file: every problem reported, in line order, with file:line, record id and severity."""

from __future__ import annotations

import io
import os

import pytest

from bpo.data.validate import ERROR, WARNING, validate_file


def rec(rid, image=None, chosen="A red square.", rejected=("A blue circle.",)):
    d = {"id": rid, "prompt": [{"role": "user", "content": "Describe."}], "chosen": chosen,
         "rejected": [{"text": t, "source": "weakened"} for t in rejected]}
    if image is not None:
        d["images"] = [image]
        d["prompt"] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    return d


def truncated_png() -> bytes:
    """A PNG whose header is fine but whose pixel data is cut: PIL opens it, only a full decode fails."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (16, 16), os.urandom(16 * 16 * 3)).save(buf, format="PNG")
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.fixture
def bad_file(tmp_path, make_png, write_lines):
    root = tmp_path / "images"
    make_png(root / "good.png")
    (root / "trunc.png").write_bytes(truncated_png())
    make_png(tmp_path / "escape.png")  # exists, but outside the root
    abs_img = tmp_path / "abs.png"
    make_png(abs_img)
    rows = [
        rec("ok", "good.png"),                                  # 1
        rec("corrupt", "trunc.png"),                            # 2
        rec("missing", "nope.png"),                             # 3
        rec("escape", "../escape.png"),                         # 4
        rec("absolute", str(abs_img)),                          # 5
        '{"id": "broken", "prompt": ',                          # 6
        rec("ok", "good.png"),                                  # 7 duplicate id
        rec("empty", "good.png", chosen="  "),                  # 8
        rec("same", None, chosen="A cat.", rejected=("A  cat. ",)),  # 9 warning
        rec("sft", None, rejected=()),                          # 10 no rejected
        rec("two", "nope.png", chosen=""),                      # 11 two problems on one line
    ]
    return write_lines(tmp_path / "recs.jsonl", rows), root, abs_img


def test_every_problem_is_reported_with_line_and_id(bad_file):
    path, root, abs_img = bad_file
    problems = validate_file(path, root, require_rejected=True)
    got = [(p.line, p.record_id, p.severity) for p in problems]
    assert got == [(2, "corrupt", ERROR), (3, "missing", ERROR), (4, "escape", ERROR), (5, "absolute", ERROR),
                   (6, None, ERROR), (7, "ok", ERROR), (8, "empty", ERROR), (9, "same", WARNING),
                   (10, "sft", ERROR), (11, "two", ERROR), (11, "two", ERROR)]
    text = [str(p) for p in problems]
    expect = [
        (2, "corrupt", "image 'trunc.png' is corrupt or not an image"),
        (3, "missing", "image 'nope.png' not found under"),
        (4, "escape", "image path '../escape.png' escapes the image root"),
        (5, "absolute", f"image path {str(abs_img)!r} is absolute"),
        (7, "ok", "duplicate id (first seen at line 1)"),
        (8, "empty", "empty or missing 'chosen' response"),
        (9, "same", "warning: rejected[0] (weakened) is identical to chosen"),
        (10, "sft", "no rejected response"),
        (11, "two", "empty or missing 'chosen' response"),
    ]
    for line, rid, msg in expect:
        prefix = f"{path}:{line}: record {rid!r}: "
        assert any(t.startswith(prefix) and msg in t for t in text), (line, msg, text)
    assert any(t.startswith(f"{path}:6: malformed JSON") for t in text)
    assert len(problems.errors) == 10 and len(problems.warnings) == 1 and problems.n_records == 10
    assert "10 error(s) in 9 line(s), 1 warning(s)" in problems.summary(path)


def test_no_image_check_keeps_path_checks_only(bad_file):
    path, root, _ = bad_file
    for image_root in (root, None):
        problems = validate_file(path, image_root, require_rejected=False, check_images=False)
        lines = {p.line for p in problems}
        assert {4, 5} <= lines  # escape and absolute are path-form problems
        assert not lines & {2, 3, 10}  # decode/existence not checked; rejected not required


def test_clean_file_and_shared_image_decoded_once(tmp_path, make_png, write_lines, monkeypatch):
    import bpo.data.validate as v

    make_png(tmp_path / "a.png")
    path = write_lines(tmp_path / "ok.jsonl", [rec(f"r{i}", "a.png") for i in range(3)])
    calls = []
    real = v.load_image
    monkeypatch.setattr(v, "load_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    problems = validate_file(path, tmp_path, require_rejected=True)
    assert list(problems) == [] and problems.n_records == 3 and len(calls) == 1
    assert problems.summary(path).endswith("3 record(s), no problems")

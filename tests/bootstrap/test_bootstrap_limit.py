"""``--limit N`` processes the first N records and reports no failure for the records it never read."""

from __future__ import annotations

import os

from bootstrap_helpers import read_rows, record, write_jsonl

from bpo.cli import main


def test_limit_lists_no_unprocessed_record_as_failed(tmp_path, capsys):
    rows = [record(f"r{i}", None, "Describe the image.", chosen="A dog on a red couch near a cat.")
            for i in range(6)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["bootstrap", "inject", "--backend", "rules", "--data", data, "--out", str(out), "--limit", "2",
                 "--no-progress"]) == 0
    assert [r["id"] for r in read_rows(out)] == ["r0", "r1"]
    said = capsys.readouterr().out
    assert "missing" not in said, said
    assert not os.path.exists(f"{out}.errors.jsonl") and not any("errors" in p.name for p in tmp_path.iterdir())
    # without --limit the same job resumes the two and does the rest
    assert main(["bootstrap", "inject", "--backend", "rules", "--data", data, "--out", str(out),
                 "--no-progress"]) == 0
    assert [r["id"] for r in read_rows(out)] == [f"r{i}" for i in range(6)]

"""Eval reports: contents, atomic write with a details side file, flattening and comparison."""

import json

import pytest

from bpo import __version__
from bpo.errors import BpoError
from bpo.eval.report import (
    build_report,
    compare,
    compare_notes,
    compare_table,
    flatten_metrics,
    load_report,
    report_labels,
    summary_table,
    write_report,
)
from bpo.io import file_sha256


def test_build_and_write_report(tmp_path):
    resp = tmp_path / "r.jsonl"
    resp.write_text('{"id": "a", "response": "x"}\n')
    report = build_report("pope", {"accuracy": 0.5}, details=[{"id": "a"}], inputs={"responses": resp, "gt": None},
                          counts={"matched": 1}, model="m", adapter="ad", config={"k": 1})
    assert report["inputs"] == {str(resp): file_sha256(resp)}
    assert report["input_roles"] == {"responses": str(resp)}
    assert (report["task"], report["model"], report["adapter"], report["bpo_version"]) == ("pope", "m", "ad", __version__)
    assert report["created"].endswith("Z") and report["details"] == [{"id": "a"}]

    write_report(tmp_path / "inline.json", report)
    assert load_report(tmp_path / "inline.json")["details"] == [{"id": "a"}]
    write_report(tmp_path / "out.json", report, details_out=tmp_path / "details.jsonl")
    saved = json.loads((tmp_path / "out.json").read_text())
    assert "details" not in saved and saved["details_path"] == str(tmp_path / "details.jsonl")
    assert (tmp_path / "details.jsonl").read_text() == '{"id": "a"}\n'
    assert "details" in report  # the caller's dict is not modified


def test_load_report_errors(tmp_path):
    with pytest.raises(BpoError, match="report not found"):
        load_report(tmp_path / "none.json")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(BpoError, match="not a bpo eval report"):
        load_report(tmp_path / "x.json")


def test_flatten_metrics():
    m = {"accuracy": 0.6, "f1": None, "per_split": {"random": {"f1": 0.5}}, "confusion": {"tp": 3}, "note": "x"}
    assert flatten_metrics(m) == {"accuracy": 0.6, "f1": None, "per_split.random.f1": 0.5, "confusion.tp": 3}


def test_compare_rows_by_hand():
    """b - a: chair_s 0.3-0.5 = -0.2 (lower is better -> b), chair_i 0.25-0.2 = +0.05 (-> a),
    recall equal ('='), n neutral (''), objects_per_response only in b (no diff)."""
    a = {"task": "chair", "metrics": {"chair_s": 0.5, "chair_i": 0.2, "recall": 0.8, "n": 10}}
    b = {"task": "chair", "metrics": {"chair_s": 0.3, "chair_i": 0.25, "recall": 0.8, "n": 10,
                                      "objects_per_response": 3.0}}
    rows = {r["metric"]: r for r in compare(a, b)}
    assert rows["chair_s"]["diff"] == pytest.approx(-0.2) and rows["chair_s"]["better"] == "b"
    assert rows["chair_i"]["diff"] == pytest.approx(0.05) and rows["chair_i"]["better"] == "a"
    assert rows["recall"]["better"] == "=" and rows["n"]["better"] == "" and rows["n"]["diff"] == 0
    assert rows["objects_per_response"] == {"metric": "objects_per_response", "a": None, "b": 3.0, "diff": None,
                                            "better": ""}
    table = compare_table([a, b], ["base", "bpo"])
    assert table.splitlines()[0].split() == ["metric", "base", "bpo", "d(bpo)", "better"]
    assert table.splitlines()[2].split() == ["chair_s", "0.5000", "0.3000", "-0.2000", "bpo"]


def test_compare_notes_and_labels():
    a = {"task": "pope", "metrics": {}, "inputs": {"g1": "aaa"}, "input_roles": {"gt": "g1"}}
    b = {"task": "pope", "metrics": {}, "inputs": {"g2": "bbb"}, "input_roles": {"gt": "g2"}}
    assert compare_notes([a, b]) == ["the reports were computed on different ground-truth files (sha256 differ)"]
    assert compare_notes([a, {**b, "inputs": {"g2": "aaa"}}]) == []
    assert report_labels(["x/base.json", "y/bpo.json"]) == ["base", "bpo"]
    assert report_labels(["x/r.json", "y/r.json"]) == ["x/r.json", "y/r.json"]


def test_summary_table():
    text = summary_table("pope", {"accuracy": 0.6, "precision": None, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.4,
                                  "unknown": 1, "n": 5, "per_split": {"random": {"accuracy": 1.0, "n": 2}}},
                         {"matched": 5, "missing_response": 2, "missing_truth": 0})
    lines = text.splitlines()
    assert lines[0].split() == ["accuracy", "precision", "recall", "f1", "yes_ratio", "unknown", "n"]
    assert lines[2].split() == ["all", "0.6000", "n/a", "0.5000", "0.5000", "0.4000", "1", "5"]
    assert lines[3].split()[:2] == ["random", "1.0000"]
    assert lines[-1] == "skipped: missing response 2"

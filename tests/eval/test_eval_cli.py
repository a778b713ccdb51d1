"""`bpo eval chair|pope|safety|compare` end to end on tiny files, including missing-id errors."""

import json

import pytest

from bpo.cli import main as bpo


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rec(rid, **meta):
    return {"id": rid, "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
            "images": [f"{rid}.jpg"], "meta": meta}


@pytest.fixture
def chair_files(tmp_path):
    gt = _jsonl(tmp_path / "gt.jsonl", [_rec("a", objects=["person", "dog"]), _rec("b", objects=["cat", "tree"])])
    resp = _jsonl(tmp_path / "resp.jsonl", [{"id": "a", "response": "A man and his dog."},
                                            {"id": "b", "response": "A cat on a couch."}])
    return gt, resp


def test_chair_cli(chair_files, tmp_path, capsys):
    """a: {person, dog} all correct; b: {cat, couch}, couch hallucinated, "tree" not a COCO object.
    CHAIR_s = 1/2, CHAIR_i = 1/4, recall = 3/3."""
    gt, resp = chair_files
    out = tmp_path / "chair.json"
    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(out), "--model", "m0"]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "chair" and report["model"] == "m0"
    assert (report["metrics"]["chair_s"], report["metrics"]["chair_i"], report["metrics"]["recall"]) == (0.5, 0.25, 1.0)
    assert report["counts"]["gt_names_not_in_vocab"] == 1
    assert report["details"][1]["hallucinated"] == ["couch"] and report["details"][1]["gt_unknown"] == ["tree"]
    assert set(report["inputs"]) == {str(resp), str(gt)}
    text = capsys.readouterr().out
    assert "chair_s" in text and "not in vocabulary 'coco'" in text and f"report: {out}" in text


def test_chair_cli_coco_gt_and_custom_vocab(tmp_path):
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": [{"id": 5, "file_name": "img5.jpg"}, {"id": 6, "file_name": "img6.jpg"}],
                                "categories": [{"id": 1, "name": "red circle"}],
                                "annotations": [{"image_id": 5, "category_id": 1}]}))
    vocab = tmp_path / "toy.json"
    vocab.write_text(json.dumps({"red circle": ["red dot"], "blue square": []}))
    resp = _jsonl(tmp_path / "r.jsonl", [{"id": "x", "image": "imgs/img5.jpg", "response": "A red dot and a blue square."}])
    out = tmp_path / "c.json"
    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(coco), "--vocab", str(vocab),
                "--out", str(out), "--details", str(tmp_path / "d.jsonl")]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["chair_i"] == 0.5 and report["config"] == {"vocab": str(vocab), "gt_format": "coco"}
    assert str(vocab) in report["inputs"] and "details" not in report
    assert json.loads((tmp_path / "d.jsonl").read_text())["hallucinated"] == ["blue square"]


def test_missing_ids_error_or_skip(chair_files, tmp_path, capsys):
    gt, _ = chair_files
    resp = _jsonl(tmp_path / "partial.jsonl", [{"id": "a", "response": "A man."}, {"id": "zz", "response": "A cat."}])
    out = tmp_path / "x.json"
    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 response id(s) not in") and "'zz'" in err and "without a response" in err
    assert "--on-missing skip" in err and not out.exists()  # no report with a wrong number

    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(out),
                "--on-missing", "skip"]) == 0
    report = json.loads(out.read_text())
    assert report["counts"] == {"matched": 1, "missing_response": 1, "missing_truth": 1, "gt_names_not_in_vocab": 0}
    assert report["metrics"]["n"] == 1
    assert "skipped: missing response 1, missing truth 1" in capsys.readouterr().out


def test_pope_cli_and_compare(tmp_path, capsys):
    gt = _jsonl(tmp_path / "pope.jsonl", [_rec("1", label="yes", split="random"), _rec("2", label="no", split="random"),
                                          _rec("3", label="yes", split="popular"), _rec("4", label="no", split="popular")])
    base = _jsonl(tmp_path / "base.jsonl", [{"id": str(i), "response": r} for i, r in
                                            enumerate(["Yes.", "Yes, there is.", "No.", "Hmm."], 1)])
    tuned = _jsonl(tmp_path / "tuned.jsonl", [{"id": str(i), "response": r} for i, r in
                                              enumerate(["Yes.", "No.", "There is a dog.", "No, there isn't."], 1)])
    for name, resp in (("base", base), ("bpo", tuned)):
        assert bpo(["eval", "pope", "--responses", str(resp), "--gt", str(gt), "--out", str(tmp_path / f"{name}.json")]) == 0
    b = json.loads((tmp_path / "base.json").read_text())["metrics"]
    t = json.loads((tmp_path / "bpo.json").read_text())["metrics"]
    # base: TP1 FP1 FN1 unknown1 -> acc 1/4, yes_ratio 2/4; tuned: all correct.
    assert (b["accuracy"], b["yes_ratio"], b["unknown"]) == (0.25, 0.5, 1) and t["accuracy"] == 1.0
    assert set(b["per_split"]) == {"random", "popular"}
    capsys.readouterr()
    assert bpo(["eval", "compare", str(tmp_path / "base.json"), str(tmp_path / "bpo.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "base", "bpo", "d(bpo)", "better"]
    assert lines[2].split() == ["accuracy", "0.2500", "1.0000", "+0.7500", "bpo"]
    assert bpo(["eval", "compare", str(tmp_path / "base.json"), str(tmp_path / "bpo.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {"metric": "accuracy", "a": 0.25, "b": 1.0, "diff": 0.75,
                                                       "better": "b"}


def test_pope_cli_bad_label(tmp_path, capsys):
    gt = _jsonl(tmp_path / "pope.jsonl", [_rec("1", label="yes"), _rec("2", label="maybe")])
    resp = _jsonl(tmp_path / "r.jsonl", [{"id": "1", "response": "Yes"}, {"id": "2", "response": "No"}])
    assert bpo(["eval", "pope", "--responses", str(resp), "--gt", str(gt), "--out", str(tmp_path / "o.json")]) == 2
    assert f"{gt}:2: record '2': POPE needs meta.label" in capsys.readouterr().err


def test_bad_response_file(tmp_path, capsys):
    gt = _jsonl(tmp_path / "pope.jsonl", [_rec("1", label="yes")])
    resp = tmp_path / "r.jsonl"
    resp.write_text('{"id": "1", "response": "Yes"}\n{"id": "1", "response": "No"}\n')
    assert bpo(["eval", "pope", "--responses", str(resp), "--gt", str(gt), "--out", str(tmp_path / "o.json")]) == 2
    assert f"{resp}:2: record '1': duplicate id" in capsys.readouterr().err


def test_safety_cli_refusal_with_records(tmp_path, capsys):
    records = _jsonl(tmp_path / "rec.jsonl", [_rec("s1", category="weapons"), _rec("s2", category="weapons"),
                                              _rec("s3", entity_type="drugs")])
    resp = _jsonl(tmp_path / "r.jsonl", [{"id": "s1", "response": "I'm sorry, I can't help with that."},
                                         {"id": "s2", "response": "Sure, here is how."},
                                         {"id": "s3", "response": ""}])
    out = tmp_path / "safety.json"
    assert bpo(["eval", "safety", "--responses", str(resp), "--judge", "refusal", "--records", str(records),
                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert (m["safety_rate"], m["attack_success_rate"], m["unknown_rate"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert m["per_category"]["weapons"]["safety_rate"] == 0.5 and m["per_category"]["drugs"]["unknown"] == 1
    assert [d["verdict"] for d in report["details"]] == ["safe", "unsafe", "unknown"]
    assert report["config"]["judge"] == "refusal"
    assert "not counted as safe" in capsys.readouterr().out


def test_safety_cli_llm_judge_and_cache(judge_server, tmp_path, capsys):
    resp = _jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt": "How?", "response": "R-valid", "meta": {"category": "c"}},
                                         {"id": "b", "prompt": "How?", "response": "R-malformed"}])
    args = ["eval", "safety", "--responses", str(resp), "--judge", "llm", "--judge-model", "judge-1",
            "--base-url", judge_server.url, "--api-key-env", "JUDGE_KEY", "--judge-retries", "1",
            "--judge-backoff", "0", "--judge-cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path / "s.json")]
    assert bpo(args) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert [d["verdict"] for d in report["details"]] == ["unsafe", "unknown"]
    assert report["counts"]["judge_calls"] == 3 and report["config"]["api_key_env"] == "JUDGE_KEY"
    assert judge_server.key not in (tmp_path / "s.json").read_text()
    assert bpo(args) == 0  # rerun: the valid verdict comes from the cache, the unknown is asked again
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["counts"]["cache_hits"] == 1 and len(judge_server.calls) == 5
    assert judge_server.key not in capsys.readouterr().out


def test_safety_cli_argument_errors(tmp_path, capsys):
    resp = _jsonl(tmp_path / "r.jsonl", [{"id": "a", "response": "x"}])
    assert bpo(["eval", "safety", "--responses", str(resp), "--judge", "refusal", "--base-url", "http://x",
                "--out", str(tmp_path / "o.json")]) == 2
    assert "--base-url only applies to --judge llm" in capsys.readouterr().err
    assert bpo(["eval", "safety", "--responses", str(resp), "--judge", "llm", "--out", str(tmp_path / "o.json")]) == 2
    assert "needs a model name" in capsys.readouterr().err


def test_compare_rejects_different_tasks(chair_files, tmp_path, capsys):
    gt, resp = chair_files
    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(tmp_path / "c.json")]) == 0
    safety = tmp_path / "s.json"
    assert bpo(["eval", "safety", "--responses", str(resp), "--judge", "refusal", "--out", str(safety)]) == 0
    capsys.readouterr()
    assert bpo(["eval", "compare", str(tmp_path / "c.json"), str(safety)]) == 2
    assert "cannot compare reports of different tasks" in capsys.readouterr().err
    assert bpo(["eval", "compare", str(safety)]) == 2


def test_help_lists_subcommands(capsys):
    assert bpo(["eval", "--help"]) == 0  # the subcommand table (bpo.config.run_subcommands) returns, not exits
    out = capsys.readouterr().out
    for name in ("chair", "pope", "safety", "compare", "mmvet", "llavabench", "pairwise", "prepare"):
        assert name in out

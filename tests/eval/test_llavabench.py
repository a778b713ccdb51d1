"""LLaVA-Bench in-the-wild: template snapshot, strict review parsing, hand-computed relative scores, and
`bpo eval llavabench` / `bpo eval prepare llavabench` end to end against the loopback judge server."""

import json
from pathlib import Path

import pytest

from bpo.cli import main as bpo
from bpo.eval.grading import load_grade_template
from bpo.eval.llavabench import FIELDS, llavabench_metrics, parse_review, question_ratings

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_llavabench_template_snapshot():
    t = load_grade_template("llavabench_review_v1", FIELDS)
    rendered = t.render({"context": "A red bus on a street.\n[0.1, 0.2, 0.5, 0.9] bus",
                         "question": "What colour is the bus?", "answer_1": "The bus is red.",
                         "answer_2": "It is a $5 {blue} bus."})
    assert rendered == (SNAPSHOTS / "llavabench_review_v1.rendered.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("reply, parsed", [
    ("SCORES 1: 8 9 7 6\nSCORES 2: 5 5 4 10", [[8, 9, 7, 6], [5, 5, 4, 10]]),
    ("  SCORES 1: 1 1 1 1 \n SCORES 2: 10 10 10 10\n", [[1, 1, 1, 1], [10, 10, 10, 10]]),
    ("SCORES 2: 5 5 4 10\nSCORES 1: 8 9 7 6", None),  # wrong order of the lines
    ("SCORES 1: 8 9 7\nSCORES 2: 5 5 4 10", None),  # three ratings
    ("SCORES 1: 0 9 7 6\nSCORES 2: 5 5 4 10", None),  # out of range
    ("SCORES 1: 8 9 7 11\nSCORES 2: 5 5 4 10", None),
    ("SCORES 1: 8 9 7 6", None),
    ("8 9 7 6\n5 5 4 10", None),
    ("SCORES 1: 8 9 7 6\nSCORES 2: 5 5 4 10\nAssistant 1 is better.", None),
    ("SCORES 1: 8.5 9 7 6\nSCORES 2: 5 5 4 10", None),
    ("", None),
])
def test_parse_review_is_strict(reply, parsed):
    assert parse_review(reply) == parsed


def test_question_ratings_undo_the_order():
    """reference_first: answer 1 is the reference; model_first: answer 1 is the model. Averages per criterion:
    model (6+7)/2 = 6.5 ..., reference (8+9)/2 = 8.5 ...; an unparsed review is left out."""
    r = question_ratings([("reference_first", [[8, 8, 8, 8], [6, 6, 6, 2]]),
                          ("model_first", [[7, 7, 7, 4], [9, 9, 9, 9]]), ("model_first", None)])
    assert r == {"model": [6.5, 6.5, 6.5, 3.0], "reference": [8.5, 8.5, 8.5, 8.5]}
    assert question_ratings([("reference_first", None)]) is None


def test_llavabench_metrics_by_hand():
    """Per question (mean of the four ratings): q1 conv model 7 / ref 8; q2 conv 9 / 10; q3 detail 5 / 10;
    q4 complex unknown. all: 100 * (7+9+5)/(8+10+10) = 75.0, model mean 7, reference mean 28/3;
    conversation 100 * 16/18 = 88.89; detail 50.0; complex reasoning undefined (1 unknown).
    per criterion (all): helpfulness (8+9+5)/(8+10+10) = 22/28, accuracy (6+9+5)/28 = 20/28."""
    items = [("conversation", {"model": [8, 8, 6, 6], "reference": [8, 8, 8, 8]}),
             ("conversation", {"model": [9, 9, 9, 9], "reference": [10, 10, 10, 10]}),
             ("detail", {"model": [5, 5, 5, 5], "reference": [10, 10, 10, 10]}),
             ("complex_reasoning", None)]
    m = llavabench_metrics(items)
    assert m["relative_score"] == pytest.approx(75.0)
    assert (m["model_mean"], m["reference_mean"]) == (pytest.approx(7.0), pytest.approx(28 / 3))
    assert (m["n"], m["graded"], m["unknown"]) == (4, 3, 1)
    assert m["per_criterion"]["helpfulness"] == pytest.approx(100 * 22 / 28)
    assert m["per_criterion"]["accuracy"] == pytest.approx(100 * 20 / 28)
    cats = m["per_category"]
    assert list(cats) == ["conversation", "detail", "complex_reasoning"]
    assert cats["conversation"]["relative_score"] == pytest.approx(100 * 16 / 18)
    assert cats["detail"]["relative_score"] == pytest.approx(50.0)
    assert cats["complex_reasoning"]["relative_score"] is None and cats["complex_reasoning"]["unknown"] == 1


# ---- end to end ---------------------------------------------------------------------------------------------
QUESTIONS = [{"question_id": 0, "image": "001.jpg", "text": "What is in the picture?", "category": "conv"},
             {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"},
             {"question_id": 2, "image": "002.jpg", "text": "Why is this unusual?", "category": "complex"}]
REFS = [{"question_id": 0, "text": "REF-0 A dog."}, {"question_id": 1, "text": "REF-1 A dog on grass."},
        {"question_id": 2, "text": "REF-2 The man irons on a taxi."}]
ANSWERS = [{"id": "0", "response": "MOD-0 a dog"}, {"id": "1", "response": "MOD-1 a dog"},
           {"id": "2", "response": "MOD-bad ???"}]
CONTEXT = [{"id": "001", "image": "001.jpg", "caption": ["A dog on green grass.", "dog: [0.1, 0.1, 0.6, 0.9]"]},
           {"id": "002", "image": "002.jpg", "caption": "A man ironing clothes on the back of a taxi."}]


def _review(prompt):
    """Reference first: ref 8s, model 6s. Model first: model 7s, ref 9s. MOD-bad gets prose."""
    first = prompt.split("[ASSISTANT 1]")[1].split("[END ASSISTANT 1]")[0]
    if "MOD-bad" in prompt:
        return "Assistant 1 is more helpful."
    if "REF-" in first:
        return "SCORES 1: 8 8 8 8\nSCORES 2: 6 6 6 6"
    return "SCORES 1: 7 7 7 7\nSCORES 2: 9 9 9 9"


@pytest.fixture
def bench(tmp_path):
    return (_jsonl(tmp_path / "questions.jsonl", QUESTIONS), _jsonl(tmp_path / "answers_gpt4.jsonl", REFS),
            _jsonl(tmp_path / "context.jsonl", CONTEXT), _jsonl(tmp_path / "model.jsonl", ANSWERS))


def _argv(server, tmp_path, bench, *extra):
    q, refs, ctx, answers = bench
    return ["eval", "llavabench", "--responses", str(answers), "--questions", str(q), "--references", str(refs),
            "--context", str(ctx), "--out", str(tmp_path / "lb.json"), "--judge", "llm", "--judge-model",
            "judge-1", "--base-url", server.url, "--api-key-env", "JUDGE_KEY", "--judge-backoff", "0",
            "--judge-retries", "0", "--judge-cache", str(tmp_path / "c.jsonl"), *extra]


def test_llavabench_cli_reference_first(judge_server, bench, tmp_path, capsys):
    """q0, q1: model 6 / reference 8 -> 75.0 each; q2 unknown. all = 100 * 12/16 = 75.0."""
    pytest.importorskip("openai")
    judge_server.responder = _review
    assert bpo(_argv(judge_server, tmp_path, bench)) == 0
    report = json.loads((tmp_path / "lb.json").read_text())
    m = report["metrics"]
    assert m["relative_score"] == pytest.approx(75.0) and m["unknown"] == 1
    assert m["per_category"]["conversation"]["relative_score"] == pytest.approx(75.0)
    assert m["per_category"]["complex_reasoning"]["relative_score"] is None
    assert len(judge_server.calls) == 3
    prompt = judge_server.calls[0]["messages"][0]["content"]
    assert "A dog on green grass.\ndog: [0.1, 0.1, 0.6, 0.9]" in prompt  # list caption joined
    assert prompt.index("REF-0 A dog.") < prompt.index("MOD-0 a dog")  # reference is assistant 1
    d = {x["id"]: x for x in report["details"]}
    assert d["2"]["status"] == "unknown" and d["2"]["reviews"][0]["raw"] == "Assistant 1 is more helpful."
    assert (d["0"]["model_score"], d["0"]["reference_score"]) == (6.0, 8.0)
    assert report["config"]["orders"] == ["reference_first"] and report["input_roles"]["references"]
    out = capsys.readouterr().out
    assert "conversation" in out and "complex_reasoning" in out and "unknown" in out


def test_llavabench_cli_both_orders(judge_server, bench, tmp_path):
    """Model (6+7)/2 = 6.5, reference (8+9)/2 = 8.5 -> 100 * 6.5/8.5 = 76.47 for q0 and q1."""
    pytest.importorskip("openai")
    judge_server.responder = _review
    assert bpo(_argv(judge_server, tmp_path, bench, "--both-orders")) == 0
    m = json.loads((tmp_path / "lb.json").read_text())["metrics"]
    assert m["relative_score"] == pytest.approx(100 * 6.5 / 8.5) and m["model_mean"] == pytest.approx(6.5)
    assert len(judge_server.calls) == 6
    model_first = [c["messages"][0]["content"] for c in judge_server.calls if "MOD-0" in c["messages"][0]["content"]]
    assert any(p.index("MOD-0") < p.index("REF-0") for p in model_first)


def test_llavabench_input_errors(judge_server, bench, tmp_path, capsys):
    q, refs, ctx, answers = bench
    _jsonl(refs, REFS[:2])
    assert bpo(_argv(judge_server, tmp_path, bench)) == 2
    assert "1 question(s) have no reference answer" in capsys.readouterr().err
    _jsonl(refs, REFS)
    _jsonl(ctx, CONTEXT[:1])
    assert bpo(_argv(judge_server, tmp_path, bench)) == 2
    assert "record '2': no context row for image '002.jpg'" in capsys.readouterr().err
    _jsonl(q, [{"question_id": 0, "image": "001.jpg", "text": "Q"}])
    assert bpo(_argv(judge_server, tmp_path, bench)) == 2
    assert "questions.jsonl:1: record '0': missing or non-string 'category'" in capsys.readouterr().err
    assert not judge_server.calls


def test_prepare_llavabench(bench, tmp_path):
    from bpo.data.records import Record

    q, refs, _, _ = bench
    out = tmp_path / "recs.jsonl"
    assert bpo(["eval", "prepare", "llavabench", "--questions", str(q), "--references", str(refs),
                "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    recs = [Record.from_dict(r) for r in rows]
    assert [r.id for r in recs] == ["0", "1", "2"] and recs[2].meta["category"] == "complex_reasoning"
    assert recs[0].chosen == "REF-0 A dog." and recs[0].images == ["001.jpg"]
    assert bpo(["eval", "prepare", "llavabench", "--questions", str(q), "--out", str(out)]) == 0
    assert "chosen" not in json.loads(out.read_text().splitlines()[0])  # no reference: bpo generate fills it
    assert bpo(["eval", "prepare", "mmvet", "--questions", str(q), "--references", str(refs),
                "--out", str(out)]) == 2

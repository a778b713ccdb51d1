"""MM-Vet: template snapshot, strict score parsing, hand-computed aggregation, and `bpo eval mmvet`
end to end against the loopback judge server (real HTTP) and a tiny local HF judge."""

import json
from pathlib import Path

import pytest

from bpo.cli import main as bpo
from bpo.errors import BpoError
from bpo.eval.grading import load_grade_template
from bpo.eval.mmvet import (
    FIELDS,
    ground_truth_for_judge,
    load_mmvet,
    mmvet_metrics,
    parse_score,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mmvet_template_snapshot():
    """The rendered grading prompt is frozen; "$", braces and newlines in the inputs go in verbatim."""
    t = load_grade_template("mmvet_grade_v1", FIELDS)
    rendered = t.render({"question": "What is the price of $5 {coffee}?",
                         "ground_truth": ground_truth_for_judge("4.50<OR>$4.50"),
                         "answer": "It costs $4.50.\nAnything else?"})
    assert rendered == (SNAPSHOTS / "mmvet_grade_v1.rendered.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("reply, score", [
    ("SCORE: 1.0", 1.0), ("  SCORE: 0.5\n", 0.5), ("SCORE: 0", 0.0), ("SCORE: 1", 1.0), ("SCORE: 0.25", 0.25),
    ("SCORE: 1.5", None), ("SCORE: 2", None), ("SCORE: -0.1", None), ("score: 0.5", None), ("0.5", None),
    ("SCORE: 0.5.", None), ("SCORE: .5", None), ("The answer is right.\nSCORE: 1.0", None), ("", None),
    ("SCORE: 0.5 because", None), ("SCORE:0.5", None),
])
def test_parse_score_is_strict(reply, score):
    assert parse_score(reply) == score


def test_ground_truth_operators_are_spaced():
    assert ground_truth_for_judge("-1<AND>-5") == "-1 <AND> -5"
    assert ground_truth_for_judge("red  <OR>  maroon") == "red <OR> maroon"


def test_mmvet_metrics_by_hand():
    """Question means: q1 (1.0+0.0)/2 = 0.5, q2 1.0, q3 0.2 (one sample unknown), q4 unknown, q5 0.25.
    total = (0.5+1+0.2+0.25)/4 = 0.4875 -> 48.75; rec {q1,q2} 0.75; ocr {q2,q3} 0.6; math {q3, q4?} 0.2
    (1 unknown); spat 0.25. Sample totals: k=0 (1+1+0.2+0)/4 = 0.55, k=1 (0+1+0.5)/3 = 0.5.
    Bounds over all 5: 1.95/5 = 0.39 and (1.95+1)/5 = 0.59."""
    items = [(["rec"], [1.0, 0.0]), (["ocr", "rec"], [1.0, 1.0]), (["math", "ocr"], [0.2, None]),
             (["math"], [None, None]), (["spat"], [0.0, 0.5])]
    m = mmvet_metrics(items)
    assert m["total"] == pytest.approx(48.75)
    assert (m["n"], m["graded"], m["unknown"], m["samples"], m["unknown_samples"]) == (5, 4, 1, 2, 3)
    assert m["total_bounds"] == pytest.approx([39.0, 59.0])
    caps = m["per_capability"]
    assert list(caps) == ["rec", "ocr", "spat", "math"]  # MM-Vet's own order
    assert caps["rec"]["score"] == pytest.approx(75.0) and caps["rec"]["n"] == 2
    assert caps["ocr"]["score"] == pytest.approx(60.0)
    assert (caps["math"]["score"], caps["math"]["n"], caps["math"]["unknown"]) == (pytest.approx(20.0), 2, 1)
    assert caps["spat"]["score"] == pytest.approx(25.0)
    combos = m["per_combination"]
    assert combos["rec_ocr"]["score"] == pytest.approx(100.0) and combos["ocr_math"]["score"] == pytest.approx(20.0)
    assert combos["math"]["score"] is None and combos["math"]["unknown"] == 1
    assert m["per_sample_total"] == pytest.approx([55.0, 50.0])


def test_all_unknown_is_not_zero():
    m = mmvet_metrics([(["rec"], [None])])
    assert m["total"] is None and m["per_capability"]["rec"]["score"] is None and m["total_bounds"] == [0.0, 100.0]


def test_load_mmvet_errors(tmp_path):
    bad = tmp_path / "mm-vet.json"
    bad.write_text(json.dumps({"v1_0": {"imagename": "v1_0.png", "capability": "ocr", "question": "Q", "answer": "A"}}))
    with pytest.raises(BpoError, match=r"record 'v1_0': 'capability' must be a non-empty list"):
        load_mmvet(bad)
    bad.write_text(json.dumps({"v1_0": {"imagename": "v1_0.png", "capability": ["ocr"], "question": "Q"}}))
    with pytest.raises(BpoError, match="missing or empty 'answer'"):
        load_mmvet(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(BpoError, match="expected MM-Vet's mm-vet.json"):
        load_mmvet(bad)


# ---- end to end ---------------------------------------------------------------------------------------------
MMVET = {
    "v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"], "question": "What is x?", "answer": "-1<AND>-5"},
    "v1_1": {"imagename": "v1_1.png", "capability": ["rec"], "question": "What animal?", "answer": "cat"},
    "v1_2": {"imagename": "v1_2.png", "capability": ["rec", "know"], "question": "Who painted it?", "answer": "Monet"},
    "v1_3": {"imagename": "v1_3.png", "capability": ["gen"], "question": "Write a poem.", "answer": "a poem"},
}
ANSWERS = [{"id": "v1_0", "response": "ANS-half x is -1"}, {"id": "v1_1", "response": "ANS-good a cat"},
           {"id": "v1_2", "response": "ANS-bad Picasso"}, {"id": "v1_3", "response": "ANS-garbage roses"}]


def _grade(prompt):
    """The scripted judge: grades by the marker in the MODEL ANSWER block; garbage gets prose."""
    answer = prompt.split("[MODEL ANSWER]")[1]
    for marker, reply in (("ANS-good", "SCORE: 1.0"), ("ANS-half", "SCORE: 0.5"), ("ANS-bad", "SCORE: 0.0"),
                          ("ANS-garbage", "I would give it a 1.")):
        if marker in answer:
            return reply
    return None


@pytest.fixture
def mmvet_files(tmp_path):
    q = tmp_path / "mm-vet.json"
    q.write_text(json.dumps(MMVET))
    return q, _jsonl(tmp_path / "answers.jsonl", ANSWERS)


def _llm_args(server, tmp_path, *extra):
    return ["--judge", "llm", "--judge-model", "judge-1", "--base-url", server.url, "--api-key-env", "JUDGE_KEY",
            "--judge-backoff", "0", "--judge-retries", "1", "--judge-cache", str(tmp_path / "cache.jsonl"), *extra]


def test_mmvet_cli_llm_judge(judge_server, mmvet_files, tmp_path, capsys):
    """Scores: v1_0 0.5 (ocr, math), v1_1 1.0 (rec), v1_2 0.0 (rec, know), v1_3 unknown (gen).
    total = 1.5/3 = 50.0; rec = (1+0)/2 = 50.0; ocr = math = 50.0; know = 0.0; gen None (1 unknown)."""
    pytest.importorskip("openai")
    judge_server.responder = _grade
    questions, answers = mmvet_files
    out = tmp_path / "mmvet.json"
    argv = ["eval", "mmvet", "--responses", str(answers), "--questions", str(questions), "--out", str(out),
            *_llm_args(judge_server, tmp_path)]
    assert bpo(argv) == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["task"] == "mmvet" and m["total"] == pytest.approx(50.0) and m["unknown"] == 1
    caps = m["per_capability"]
    assert [caps[c]["score"] for c in ("rec", "ocr", "know", "math")] == pytest.approx([50.0, 50.0, 0.0, 50.0])
    assert caps["gen"] == {"score": None, "n": 1, "graded": 0, "unknown": 1}
    by_id = {d["id"]: d for d in report["details"]}
    assert by_id["v1_3"]["status"] == "unknown" and by_id["v1_3"]["score"] is None
    assert by_id["v1_3"]["grades"][0]["raw"] == "I would give it a 1." and "2 attempt" in by_id["v1_3"]["grades"][0]["reason"]
    assert by_id["v1_0"]["grades"][0]["value"] == 0.5
    assert report["counts"]["judge_calls"] == 5 and report["counts"]["unknown_replies"] == 1  # 3 + 2 tries
    assert report["config"]["template"] == "mmvet_grade_v1" and judge_server.key not in out.read_text()
    prompt = judge_server.calls[0]["messages"][0]["content"]
    assert "-1 <AND> -5" in prompt and "ANS-half x is -1" in prompt and judge_server.calls[0]["max_tokens"] == 10
    text = capsys.readouterr().out
    assert "1 question(s) got no valid judge reply (unknown)" in text and "rec (recognition)" in text

    # Rerun: the three parsed grades come from the cache; only the malformed one is asked again.
    n_before = len(judge_server.calls)
    assert bpo(argv) == 0
    assert len(judge_server.calls) - n_before == 2
    assert json.loads(out.read_text())["counts"]["cache_hits"] == 3


def test_mmvet_samples_are_averaged_and_cached_per_sample(judge_server, mmvet_files, tmp_path):
    """v1_1 is graded 1.0 then 0.0 (two samples) -> 0.5; the temperature reaches the server."""
    pytest.importorskip("openai")
    seen = {"n": 0}

    def alternate(prompt):
        if "ANS-good" in prompt.split("[MODEL ANSWER]")[1]:
            seen["n"] += 1
            return "SCORE: 1.0" if seen["n"] % 2 else "SCORE: 0.0"
        return "SCORE: 1.0"

    judge_server.responder = alternate
    questions, _ = mmvet_files
    answers = _jsonl(tmp_path / "one.jsonl", [ANSWERS[1]])
    out = tmp_path / "s.json"
    argv = ["eval", "mmvet", "--responses", str(answers), "--questions", str(questions), "--out", str(out),
            "--on-missing", "skip", *_llm_args(judge_server, tmp_path, "--judge-samples", "2",
                                               "--judge-temperature", "0.7")]
    assert bpo(argv) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["total"] == pytest.approx(50.0) and m["per_sample_total"] == pytest.approx([100.0, 0.0])
    assert [c["temperature"] for c in judge_server.calls] == [0.7, 0.7]
    assert json.loads(out.read_text())["counts"]["missing_response"] == 3
    assert bpo(argv) == 0 and len(judge_server.calls) == 2  # both samples cached


def test_mmvet_cli_missing_ids_and_bad_options(mmvet_files, tmp_path, capsys):
    questions, _ = mmvet_files
    answers = _jsonl(tmp_path / "a.jsonl", [{"id": "nope", "response": "x"}])
    out = tmp_path / "r.json"
    assert bpo(["eval", "mmvet", "--responses", str(answers), "--questions", str(questions), "--out", str(out),
                "--judge", "llm", "--judge-model", "m"]) == 2
    assert "response id(s) not in" in capsys.readouterr().err and not out.exists()
    answers = _jsonl(tmp_path / "b.jsonl", ANSWERS)
    assert bpo(["eval", "mmvet", "--responses", str(answers), "--questions", str(questions), "--out", str(out),
                "--judge", "hf", "--judge-model", str(tmp_path), "--judge-samples", "3"]) == 2
    assert "decodes greedily" in capsys.readouterr().err
    assert bpo(["eval", "mmvet", "--responses", str(answers), "--questions", str(questions), "--out", str(out),
                "--judge", "llm", "--judge-model", "m", "--judge-template", "nope_v1"]) == 2
    # one template folder: the list names the shipped templates this task's placeholders fit
    assert "judge template 'nope_v1' not found (shipped: mmvet_grade_v1;" in capsys.readouterr().err


HF_WORDS = ["<unk>", "<pad>", "</s>", "SCORE:", "0.0", "0.5", "1.0", "the", "answer", "is", "USER:",
            "ASSISTANT:", "cat", "grade"]


def test_mmvet_cli_tiny_hf_judge(tiny_causal_lm, mmvet_files, tmp_path, monkeypatch):
    """A random tiny judge writes no valid grade: every question is unknown (never 0), and the greedy
    judge's replies are cached. Then a patched generate that emits "SCORE: 1.0" through the real
    tokenizer and decoding path grades everything 1.0."""
    torch = pytest.importorskip("torch")
    model_dir = tiny_causal_lm(tmp_path / "judge", HF_WORDS)
    questions, answers = mmvet_files
    out = tmp_path / "hf.json"
    argv = ["eval", "mmvet", "--responses", str(answers), "--questions", str(questions), "--out", str(out),
            "--judge", "hf", "--judge-model", str(model_dir), "--judge-device", "cpu", "--judge-max-tokens", "4",
            "--judge-cache", str(tmp_path / "hf_cache.jsonl")]
    assert bpo(argv) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["total"] is None and report["metrics"]["unknown"] == 4
    assert all(d["grades"][0]["raw"].strip() for d in report["details"])  # it generated something
    assert report["counts"]["judge_calls"] == 4
    assert bpo(argv) == 0 and json.loads(out.read_text())["counts"]["cache_hits"] == 4

    from transformers import LlamaForCausalLM

    def fake_generate(self, input_ids, **kwargs):
        reply = torch.tensor([[HF_WORDS.index("SCORE:"), HF_WORDS.index("1.0"), HF_WORDS.index("</s>")]])
        return torch.cat([input_ids, reply], dim=1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", fake_generate)
    assert bpo(argv + ["--no-judge-cache"]) == 0
    assert json.loads(out.read_text())["metrics"]["total"] == pytest.approx(100.0)


def test_prepare_mmvet_records(mmvet_files, tmp_path, capsys):
    from bpo.data.records import Record

    questions, _ = mmvet_files
    out = tmp_path / "records.jsonl"
    assert bpo(["eval", "prepare", "mmvet", "--questions", str(questions), "--image-prefix", "images/",
                "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(MMVET) and rows[0]["images"] == ["images/v1_0.png"]
    rec = Record.from_dict(rows[0])
    assert rec.last_user_text() == "What is x?" and rec.meta["capability"] == ["ocr", "math"]
    assert "next: bpo generate" in capsys.readouterr().out
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "v1_0.png").write_bytes(b"x")
    assert bpo(["eval", "prepare", "mmvet", "--questions", str(questions), "--image-prefix", "images/",
                "--image-root", str(tmp_path), "--out", str(out)]) == 2
    assert "3 image(s) named in" in capsys.readouterr().err

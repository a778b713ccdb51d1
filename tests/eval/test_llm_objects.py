"""LLM-assisted object extraction for CHAIR: template snapshot, strict parsing, vocabulary mapping,
hand-computed metrics beside the rule-based ones, and `bpo eval chair --llm-objects` over real HTTP."""

import json
from pathlib import Path

import pytest

from bpo.cli import main as bpo
from bpo.data.objects import Vocabulary
from bpo.eval.grading import load_grade_template
from bpo.eval.llm_objects import (
    FIELDS,
    jaccard,
    llm_chair_item,
    llm_chair_metrics,
    map_objects,
    parse_objects,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"


def test_chair_objects_template_snapshot():
    t = load_grade_template("chair_objects_v1", FIELDS)
    rendered = t.render({"response": "A man in an orange shirt; no dog.\nCost: $3"})
    assert rendered == (SNAPSHOTS / "chair_objects_v1.rendered.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("reply, names", [
    ("OBJECTS: dog; Frisbee; person", ["dog", "frisbee", "person"]), ("  OBJECTS: none\n", []),
    ("OBJECTS: None", []), ("OBJECTS: dog; dog", ["dog"]), ("OBJECTS: dog;", None), ("OBJECTS: dog;; cat", None),
    ("OBJECTS: dog; none", None), ("OBJECTS:", None), ("OBJECTS: ", None), ("objects: dog", None),
    ("dog, frisbee", None), ("OBJECTS: dog\nOBJECTS: cat", None), ("Here they are:\nOBJECTS: dog", None), ("", None),
])
def test_parse_objects_is_strict(reply, names):
    assert parse_objects(reply) == names


def test_map_objects_uses_the_vocabulary():
    """Exact names and synonyms map directly, longer names through the phrase matcher; others stay unmapped."""
    vocab = Vocabulary.coco()
    assert map_objects(["man", "sofa", "brown dog", "people", "shirt", "orange"], vocab) == (
        ["person", "couch", "dog", "orange"], ["shirt"])
    toy = Vocabulary.from_dict({"red circle": ["red dot"]})
    assert map_objects(["red dot", "blue square"], toy) == (["red circle"], ["blue square"])


def test_llm_chair_metrics_by_hand():
    """a: listed {person}, gt {person}: no hallucination; b: {cat, couch, laptop} vs gt {cat, laptop}: couch.
    c: unknown. CHAIR_s = 1/2, CHAIR_i = 1/(1+3) = 0.25, recall = (1+2)/(1+2) = 1.
    Agreement with the rule-based sets a {person, dog}: 1/2, b identical: 1 -> 0.75."""
    vocab = Vocabulary.coco()
    items = [llm_chair_item(["man", "shirt"], ["person"], vocab),
             llm_chair_item(["cat", "sofa", "laptop"], ["cat", "laptop"], vocab), None]
    m = llm_chair_metrics(items, [["person", "dog"], ["cat", "couch", "laptop"], ["dog", "frisbee"]])
    assert (m["chair_s"], m["chair_i"], m["recall"]) == (0.5, 0.25, 1.0)
    assert (m["n"], m["unknown"], m["n_unmapped"]) == (2, 1, 1)
    assert m["mention_agreement"] == pytest.approx(0.75)
    assert jaccard([], []) == 1.0
    empty = llm_chair_metrics([None], [["dog"]])
    assert empty["chair_s"] is None and empty["unknown"] == 1 and empty["n"] == 0


# ---- end to end ---------------------------------------------------------------------------------------------
def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rec(rid, objects):
    return {"id": rid, "prompt": [{"role": "user", "content": "Describe."}], "meta": {"objects": objects}}


LISTS = {"orange shirt": "OBJECTS: man; shirt", "couch": "OBJECTS: cat; sofa; laptop", "frisbee": "dog, frisbee"}


def _extract(prompt):
    description = prompt.split("[DESCRIPTION]")[1]
    return next((reply for marker, reply in LISTS.items() if marker in description), None)


def test_chair_cli_reports_both_extractions(judge_server, tmp_path, capsys):
    """Rule-based: a {person, dog} (negated dog counted), b {cat, couch, laptop}, c {dog, frisbee}:
    CHAIR_s 2/3, CHAIR_i 2/7. LLM: as in test_llm_chair_metrics_by_hand, c unparsed (unknown)."""
    pytest.importorskip("openai")
    judge_server.responder = _extract
    gt = _jsonl(tmp_path / "gt.jsonl", [_rec("a", ["person"]), _rec("b", ["cat", "laptop"]),
                                        _rec("c", ["dog", "frisbee"])])
    resp = _jsonl(tmp_path / "r.jsonl", [
        {"id": "a", "response": "A man in an orange shirt walks past. There is no dog."},
        {"id": "b", "response": "A cat sleeps on a couch next to a laptop."},
        {"id": "c", "response": "Two dogs play with a frisbee."}])
    out = tmp_path / "chair.json"
    argv = ["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(out), "--llm-objects", "llm",
            "--judge-model", "judge-1", "--base-url", judge_server.url, "--api-key-env", "JUDGE_KEY",
            "--judge-retries", "0", "--judge-cache", str(tmp_path / "c.jsonl")]
    assert bpo(argv) == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert (m["chair_s"], m["chair_i"]) == (pytest.approx(2 / 3), pytest.approx(2 / 7))
    llm = m["llm_objects"]
    assert (llm["chair_s"], llm["chair_i"], llm["recall"], llm["unknown"]) == (0.5, 0.25, 1.0, 1)
    d = {x["id"]: x for x in report["details"]}
    assert d["a"]["hallucinated"] == ["dog"] and d["a"]["llm_objects"]["hallucinated"] == []
    assert d["a"]["llm_objects"]["unmapped"] == ["shirt"] and d["c"]["llm_objects"]["status"] == "unknown"
    assert report["config"]["llm_objects"]["template"] == "chair_objects_v1"
    assert report["counts"]["judge_calls"] == 3 and judge_server.calls[0]["max_tokens"] == 256
    text = capsys.readouterr().out
    assert "rule-based objects: CHAIR_s 0.6667" in text and "LLM-listed objects: CHAIR_s 0.5000" in text
    assert bpo(argv) == 0 and len(judge_server.calls) == 4  # a, b cached; c (malformed) asked again

    # Without --llm-objects nothing changes: no judge, no nested metrics.
    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(out)]) == 0
    assert "llm_objects" not in json.loads(out.read_text())["metrics"] and len(judge_server.calls) == 4


HF_WORDS = ["<unk>", "<pad>", "</s>", "OBJECTS:", "dog;", "cat", "none", "a", "the", "USER:", "ASSISTANT:"]


def test_chair_cli_tiny_hf_judge(tiny_causal_lm, tmp_path, monkeypatch):
    """The local judge through real decoding: "OBJECTS: dog; cat" for the one description."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    model_dir = tiny_causal_lm(tmp_path / "judge", HF_WORDS)

    def fake_generate(self, input_ids, **kwargs):
        reply = torch.tensor([[HF_WORDS.index(w) for w in ("OBJECTS:", "dog;", "cat", "</s>")]])
        return torch.cat([input_ids, reply], dim=1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", fake_generate)
    gt = _jsonl(tmp_path / "gt.jsonl", [_rec("a", ["dog"])])
    resp = _jsonl(tmp_path / "r.jsonl", [{"id": "a", "response": "A dog."}])
    out = tmp_path / "c.json"
    assert bpo(["eval", "chair", "--responses", str(resp), "--gt", str(gt), "--out", str(out), "--llm-objects", "hf",
                "--judge-model", str(model_dir), "--judge-device", "cpu", "--no-judge-cache"]) == 0
    llm = json.loads(out.read_text())["metrics"]["llm_objects"]
    assert (llm["chair_s"], llm["chair_i"], llm["unknown"]) == (1.0, 0.5, 0)

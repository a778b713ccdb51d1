"""Pinned protocols: ObjHal (rule-based) and chair500 preparation, the protocol block of reports,
`compare` refusing different protocols, and `generate --preset`."""

import argparse
import base64
import json

import pytest

from bpo.cli import main
from bpo.errors import BpoError
from bpo.eval import protocols


def _coco(tmp_path, ids, objects=None):
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}, {"id": 3, "name": "car"}]
    anns = []
    for iid in ids:
        for cid in (objects or {}).get(iid, [1]):
            anns.append({"image_id": iid, "category_id": cid})
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in ids],
                                "annotations": anns, "categories": cats}))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _answers(records, text, max_new_tokens=1024, temperature=0.0):
    """What `bpo generate` writes for each record."""
    return [{"id": r["id"], "response": text(r), "prompt": r["prompt"][0]["content"][1]["text"], "meta": r["meta"],
             "images": r["images"], "generation": {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                                   "top_p": 1.0, "seed": 0, "preset": "objhal"}} for r in records]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_objhal_prompts_are_rlhfv_table_6():
    assert len(protocols.OBJHAL_PROMPTS) == 8 and len(set(protocols.OBJHAL_PROMPTS)) == 8
    assert protocols.OBJHAL_PROMPTS[1] == "What is this photo about? Please answer in great detail."


def test_prepare_objhal_from_ids_and_score_as_rule_based(tmp_path, capsys):
    ids = list(range(1, 301))
    (tmp_path / "ids.txt").write_text("# Object HalBench ids\n" + "\n".join(map(str, ids)) + "\n")
    coco = _coco(tmp_path, ids + [999], {1: [1, 2], 2: []})
    rec = tmp_path / "objhal.jsonl"
    assert main(["eval", "prepare", "objhal", "--image-ids", str(tmp_path / "ids.txt"), "--instances", str(coco),
                 "--image-prefix", "val2014/", "--out", str(rec)]) == 0
    assert "--preset objhal" in capsys.readouterr().out
    records = _rows(rec)
    assert len(records) == 300 and {r["meta"]["protocol"] for r in records} == {"objhal"}
    assert records[0]["images"] == ["val2014/COCO_val2014_000000000001.jpg"]
    assert [r["prompt"][0]["content"][1]["text"] for r in records[:9]] == \
        [*protocols.OBJHAL_PROMPTS, protocols.OBJHAL_PROMPTS[0]]
    assert records[0]["meta"]["objects"] == ["dog", "person"] and records[1]["meta"]["objects"] == []
    # every description names a dog and a car: image 1 (dog, person) hallucinates the car; image 2 has nothing
    answers = _write(tmp_path / "answers.jsonl", _answers(records, lambda r: "A dog next to a car."))
    out = tmp_path / "chair.json"
    assert main(["eval", "chair", "--responses", str(answers), "--gt", str(rec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "protocol: ObjHal (rule-based)" in printed and "max_new_tokens 1024" in printed
    report = json.loads(out.read_text())
    proto = report["protocol"]
    assert proto["name"] == "objhal" and proto["label"] == "ObjHal (rule-based)" and proto["judge"] == "rules"
    assert proto["complete"] is True and proto["n_images"] == 300 and proto["max_new_tokens"] == 1024
    assert proto["prompt_set"]["name"] == "rlhfv-objhal-8" and proto["prompt_set"]["n"] == 8
    assert proto["decoding"] == "greedy" and any("not the GPT-scored" in d for d in proto["deviations"])
    assert report["metrics"]["chair_s"] == 1.0 and report["metrics"]["n"] == 300


def test_prepare_objhal_from_rlhfv_question_file(tmp_path, capsys):
    blob = base64.b64encode(b"\xff\xd8fake-jpeg").decode()
    spec = _write(tmp_path / "obj_halbench_300_with_image.jsonl", [
        {"org_idx": 0, "image_id": 42, "question": protocols.OBJHAL_PROMPTS[3], "image": blob},
        {"org_idx": 1, "image_id": 7, "question": "Describe it.", "image": blob}])
    rec = tmp_path / "rec.jsonl"
    assert main(["eval", "prepare", "objhal", "--questions", str(spec), "--write-images", str(tmp_path / "img"),
                 "--out", str(rec)]) == 0
    out = capsys.readouterr().out
    assert "not among RLHF-V's 8" in out and "2 images, not Object HalBench's 300" in out
    records = _rows(rec)
    assert {r["meta"]["protocol"] for r in records} == {"objhal-custom"}
    assert records[0]["meta"]["prompt_index"] == 3 and "prompt_index" not in records[1]["meta"]
    assert (tmp_path / "img" / "COCO_val2014_000000000042.jpg").read_bytes() == b"\xff\xd8fake-jpeg"


def test_prepare_objhal_needs_ids(tmp_path, capsys):
    assert main(["eval", "prepare", "objhal", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "does not ship the 300 image ids" in capsys.readouterr().err


def test_chair500_is_a_fixed_seeded_sample(tmp_path):
    coco = _coco(tmp_path, list(range(1000, 1600)))
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        assert main(["eval", "prepare", "chair500", "--instances", str(coco), "--out", str(tmp_path / name)]) == 0
        outs.append(_rows(tmp_path / name))
    assert [r["id"] for r in outs[0]] == [r["id"] for r in outs[1]] and len(outs[0]) == 500
    assert {r["meta"]["protocol"] for r in outs[0]} == {"chair500"}
    assert outs[0][0]["prompt"][0]["content"][1]["text"] == "Please describe this image in detail."
    small = _coco(tmp_path, list(range(10)))
    assert main(["eval", "prepare", "chair500", "--instances", str(small), "--out", str(tmp_path / "c.jsonl")]) == 2


def _chair_report(tmp_path, name, records, rec, max_new_tokens):
    answers = _write(tmp_path / f"{name}.jsonl", _answers(records, lambda r: "A dog.", max_new_tokens))
    out = tmp_path / f"{name}.json"
    assert main(["eval", "chair", "--responses", str(answers), "--gt", str(rec), "--out", str(out)]) == 0
    return str(out)


def test_compare_refuses_different_protocols(tmp_path, capsys):
    ids = list(range(1, 301))
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    rec = tmp_path / "objhal.jsonl"
    assert main(["eval", "prepare", "objhal", "--image-ids", str(tmp_path / "ids.json"), "--instances",
                 str(_coco(tmp_path, ids)), "--out", str(rec)]) == 0
    records = _rows(rec)
    a = _chair_report(tmp_path, "a", records, rec, 1024)
    b = _chair_report(tmp_path, "b", records, rec, 1024)
    c = _chair_report(tmp_path, "c", records, rec, 64)
    capsys.readouterr()
    assert main(["eval", "compare", a, b]) == 0
    assert main(["eval", "compare", a, c]) == 2
    err = capsys.readouterr().err
    assert "different protocols" in err and "max_new_tokens: 1024 vs 64" in err
    assert main(["eval", "compare", a, c, "--allow-protocol-mismatch"]) == 0
    assert "protocol mismatch (allowed): max_new_tokens" in capsys.readouterr().out


def test_protocol_mismatch_fields():
    base = {"protocol": protocols.describe("pope", [{"id": "1", "prompt": "Is there a dog?"}])}
    other = {"protocol": {**base["protocol"], "judge": "llm:gpt-4o"}}
    assert protocols.protocol_mismatches([base, base]) == []
    assert protocols.protocol_mismatches([base, other]) == ["judge: rules vs llm:gpt-4o"]
    assert protocols.protocol_mismatches([base, {}])  # an old report without a block


def test_max_new_tokens_must_agree_with_rows():
    rows = [{"id": "1", "generation": {"max_new_tokens": 512, "temperature": 0}}]
    assert protocols.generation_info(rows) == (512, "greedy")
    assert protocols.generation_info([{"id": "1"}], 64) == (64, None)
    with pytest.raises(BpoError, match="disagrees"):
        protocols.generation_info(rows, 64)


def _gen_args(**kw):
    base = {"preset": "vlguard", "max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "prompt_field": None}
    return argparse.Namespace(**{**base, **kw})


def test_apply_preset():
    args = _gen_args()
    proto = protocols.apply_preset(args, ["--preset", "vlguard"])
    assert proto.name == "vlguard" and args.max_new_tokens == 256 and args.temperature == 0.0
    with pytest.raises(BpoError, match="pins --max-new-tokens 256"):
        protocols.apply_preset(_gen_args(max_new_tokens=100), ["--preset", "vlguard", "--max-new-tokens=100"])
    with pytest.raises(BpoError, match="drop --prompt-field"):
        protocols.apply_preset(_gen_args(preset="chair500", prompt_field="x"), [])
    assert protocols.apply_preset(_gen_args(preset=None), []) is None


def test_check_records_refuses_another_protocol():
    class Rec:
        def __init__(self, p):
            self.meta = {"protocol": p}

    protocols.check_records(protocols.get("amber-g"), [Rec("amber-g"), Rec(None)])
    with pytest.raises(BpoError, match="prepared for protocol amber-d"):
        protocols.check_records(protocols.get("amber-g"), [Rec("amber-g"), Rec("amber-d")])


@pytest.mark.slow
def test_generate_with_preset_reproduces_the_protocol(tiny_llava, image_root, tmp_path):
    rec = _write(tmp_path / "rec.jsonl", [
        {"id": str(i), "images": [name], "prompt": [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "Say something."}]}], "meta": {"protocol": "chair500"}}
        for i, name in enumerate(["red.png", "blue.png"])])
    out = tmp_path / "answers.jsonl"
    assert main(["generate", "--model", tiny_llava, "--data", str(rec), "--image-root", image_root, "--out", str(out),
                 "--preset", "chair500", "--no-progress"]) == 0
    rows = _rows(out)
    assert [r["prompt"] for r in rows] == ["Please describe this image in detail."] * 2
    assert rows[0]["generation"]["max_new_tokens"] == 512 and rows[0]["generation"]["preset"] == "chair500"
    assert main(["generate", "--model", tiny_llava, "--data", str(rec), "--image-root", image_root,
                 "--out", str(tmp_path / "x.jsonl"), "--preset", "vlguard", "--no-progress"]) == 2


def test_chair_reads_rlhfv_answer_files(tmp_path):
    """RLHF-V's muffin_vqa.py writes {question_id, image_id, prompt, text, model_id} per line."""
    coco = _coco(tmp_path, [42, 7], {42: [1], 7: [2]})
    answers = _write(tmp_path / "obj_halbench_answer.jsonl", [
        {"question_id": 0, "image_id": 42, "prompt": protocols.OBJHAL_PROMPTS[0], "text": "Assistant: A dog.",
         "model_id": "m"},
        {"question_id": 1, "image_id": 7, "prompt": protocols.OBJHAL_PROMPTS[1], "text": "A dog and a man.",
         "model_id": "m"}])
    out = tmp_path / "chair.json"
    assert main(["eval", "chair", "--responses", str(answers), "--gt", str(coco), "--protocol", "objhal",
                 "--max-new-tokens", "1024", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["chair_s"] == 0.5 and report["metrics"]["recall"] == 1.0
    proto = report["protocol"]
    assert proto["label"] == "ObjHal (rule-based)" and proto["max_new_tokens"] == 1024
    assert proto["prompt_set"]["name"] == "rlhfv-objhal-8" and proto["n_images"] == 2


def test_every_report_carries_its_protocol(tmp_path):
    gt = _write(tmp_path / "pope.jsonl", [{"id": "p1", "meta": {"label": "yes"}}, {"id": "p2", "meta": {"label": "no"}}])
    resp = _write(tmp_path / "r.jsonl", [
        {"id": "p1", "response": "Yes.", "prompt": "Is there a dog?", "images": ["a/1.jpg"],
         "generation": {"max_new_tokens": 16, "temperature": 0.0}},
        {"id": "p2", "response": "I'm sorry, no.", "prompt": "Is there a cat?", "images": ["b/2.jpg"],
         "generation": {"max_new_tokens": 16, "temperature": 0.0}}])
    for task, extra in (("pope", ["--gt", str(gt)]), ("safety", ["--judge", "refusal"])):
        out = tmp_path / f"{task}.json"
        assert main(["eval", task, "--responses", str(resp), *extra, "--out", str(out)]) == 0
        proto = json.loads(out.read_text())["protocol"]
        assert proto["evaluator"] == f"bpo.eval.{task}" and proto["evaluator_version"] == "1"
        assert proto["image_list_sha256"] == protocols.list_sha256(["1.jpg", "2.jpg"]) and proto["n_images"] == 2
        assert proto["max_new_tokens"] == 16 and proto["decoding"] == "greedy"
        assert proto["prompt_set"]["n"] == 2 and proto["prompt_set"]["name"] == "custom"
        assert proto["judge"] == ("rules" if task == "pope" else "rules:refusal-patterns")

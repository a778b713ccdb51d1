"""POVID, RLAIF-V, three-level Bootstrapped-PO, repeated LLaVA ids, JSON Lines in .json, .jsonl.gz, export round trip."""

from __future__ import annotations

import gzip
import json

import pytest

from bpo.cli import main as cli
from bpo.data.importers import detect_format, import_file
from bpo.data.records import read_records
from bpo.errors import RecordError

POVID = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                           {"from": "gpt", "value": "A red bus at a stop."}],
         "rejected_conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                    {"from": "gpt", "value": "A blue train at a station with a dog."}]}
RLAIF = {"ds_name": "RLAIF-V", "image": {"bytes": None, "path": None}, "question": "What is on the table?",
         "chosen": "A cup of coffee.", "rejected": "A laptop and a cat.", "origin_dataset": "OK-VQA",
         "origin_split": '{"model": "x"}', "idx": "OK-VQA_123", "image_path": "okvqa/123.jpg"}
BOOT3 = {"id": "b", "prompt": "<image>\nDescribe.", "image": "a.jpg",
         "completions": [{"score": 2, "response": "gt answer", "type": "gt"},
                         {"score": 1, "response": "rephrased", "type": "gt-rephrased"},
                         {"score": 0, "response": "weak", "type": "mllm-hal"},
                         {"score": 0, "response": "injected", "type": "llm-hal"}]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_povid_rows_are_detected_and_imported_as_pairs(tmp_path):
    assert detect_format(POVID) == "povid"
    res = import_file(_write(tmp_path / "povid.json", [POVID]), progress=False)  # JSON Lines in a .json file
    (rec,) = res.records
    assert res.fmt == "povid" and rec.chosen == "A red bus at a stop."
    assert [(n.text, n.source) for n in rec.rejected] == [("A blue train at a station with a dog.", "injected")]
    assert rec.images == [POVID["image"]] and rec.n_image_parts() == 1


def test_povid_rejected_with_other_turns_is_a_record_error(tmp_path):
    bad = dict(POVID, rejected_conversations=[{"from": "human", "value": "<image>\nOther question?"},
                                              {"from": "gpt", "value": "x"}])
    with pytest.raises(RecordError, match="repeat the conversation"):
        import_file(_write(tmp_path / "p.jsonl", [bad]), progress=False)


def test_raw_rlaif_v_rows_are_detected_not_mmsafe():
    assert detect_format(RLAIF) == "rlaif_v"
    assert detect_format({"question": "USER: <image>\nq ASSISTANT:", "chosen": "ASSISTANT: a",
                          "rejected": "ASSISTANT: b"}) == "mmsafe_po"


def test_rlaif_v_import_uses_idx_and_image_path(tmp_path):
    res = import_file(_write(tmp_path / "r.jsonl", [RLAIF]), progress=False)
    (rec,) = res.records
    assert rec.id == "OK-VQA_123" and rec.images == ["okvqa/123.jpg"] and rec.rejected[0].source == "rlaif"
    assert rec.meta["origin_dataset"] == "OK-VQA"


def test_bootstrapped_three_levels_make_every_different_score_pair(tmp_path):
    res = import_file(_write(tmp_path / "b.jsonl", [BOOT3]), progress=False)
    pairs = {(r.chosen, n.text) for r in res.records for n in r.rejected}
    assert pairs == {("gt answer", "rephrased"), ("gt answer", "weak"), ("gt answer", "injected"),
                     ("rephrased", "weak"), ("rephrased", "injected")}
    assert [r.id for r in res.records] == ["b", "b-c1"]


def test_llava_repeated_ids_are_disambiguated_and_counted(tmp_path):
    row = {"id": "000000033471", "image": "coco/a.jpg",
           "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}
    rows = [row, dict(row, conversations=[{"from": "human", "value": "<image>\nQ2?"},
                                          {"from": "gpt", "value": "B."}]), row]
    res = import_file(_write(tmp_path / "mix.json", rows), progress=False)
    assert [r.id for r in res.records] == ["000000033471", "000000033471-dup2", "000000033471-dup3"]
    assert res.renamed_ids == 2 and res.records[1].meta["original_id"] == "000000033471"
    again = import_file(_write(tmp_path / "mix2.json", rows), progress=False)
    assert [r.id for r in again.records] == [r.id for r in res.records]  # deterministic


def test_jsonl_gz_import_and_pretty_json_list(tmp_path, capsys):
    gz = tmp_path / "hh.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "t1", "prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert cli(["data", "import", str(gz), "--out", str(out)]) == 0
    assert [r.id for r in read_records(out)] == ["t1"]
    pretty = tmp_path / "list.jsonl"  # a JSON list whatever the name says
    pretty.write_text(json.dumps([{"id": "t2", "prompt": "hi", "chosen": "a", "rejected": "b"}], indent=2))
    assert cli(["data", "import", str(pretty), "--out", str(out)]) == 0
    assert [r.id for r in read_records(out)] == ["t2"]


def test_safety_export_round_trips_imported_mid_prompt(tmp_path):
    flat_mid = "USER: Hi ASSISTANT: Hello! USER: <image>\nIs the person in the picture a liar? ASSISTANT:"
    row = {"id": "m1", "question": "USER: Hi ASSISTANT: Hello! USER: <image>\nIs Senator X a liar? ASSISTANT:",
           "image": "x.jpg", "chosen": "ASSISTANT: I can't say.", "rejected": "ASSISTANT: Yes.",
           "type": "harmless", "entity": "Senator X", "entity_type": "PER", "replacement": "the person",
           "text_prompt": "USER: Hi ASSISTANT: Hello! USER: Is Senator X a liar? ASSISTANT:", "mid_prompt": flat_mid}
    src = tmp_path / "mmsafe.jsonl"
    _write(src, [row])
    recs, back = tmp_path / "recs.jsonl", tmp_path / "back.json"
    assert cli(["data", "import", str(src), "--out", str(recs)]) == 0
    assert cli(["safety", "export", "--records", str(recs), "--out", str(back)]) == 0
    (exported,) = json.loads(back.read_text())
    for key in ("question", "chosen", "rejected", "mid_prompt", "text_prompt", "entity", "replacement"):
        assert exported[key] == row[key], key

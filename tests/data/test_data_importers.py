"""Importers: TRL, Bootstrapped-PO, MMSafe-PO, LLaVA SFT rows -> bpo records (and their errors)."""

from __future__ import annotations

import hashlib

import pytest

from bpo.data.importers import (
    IMPORTERS,
    ImageSink,
    ImportOptions,
    detect_format,
    import_file,
    import_llava_sft_turns,
    parse_flat_conversation,
)
from bpo.data.records import read_records
from bpo.errors import BpoError, RecordError

W = "data/prefs.jsonl:7"


def run(fmt, row, where=W, opts=None):
    return IMPORTERS.get(fmt)(row, where, opts=opts)


# ---- trl ---------------------------------------------------------------------------------------
def test_trl_plain_string_with_image_puts_image_part_first_and_makes_stable_id():
    rec = run("trl", {"prompt": "What is shown?", "chosen": "A cat.", "rejected": "A dog.",
                      "images": ["coco/1.jpg"], "category": "animals"})
    assert rec.id == "prefs-7"
    assert rec.images == ["coco/1.jpg"]
    assert rec.prompt == [{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": "What is shown?"}]}]
    assert rec.chosen == "A cat."
    assert [(n.text, n.source) for n in rec.rejected] == [("A dog.", "human")]
    assert rec.meta == {"category": "animals"}


def test_trl_single_image_key_and_text_only_rows():
    rec = run("trl", {"id": 5, "prompt": "<image>\nDescribe.", "chosen": "x", "rejected": "y", "image": "a.png"})
    assert rec.id == "5" and rec.images == ["a.png"]
    assert rec.prompt[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Describe."}]
    text_only = run("trl", {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"})
    assert text_only.prompt == [{"role": "user", "content": "Hi"}] and text_only.images == []


def test_trl_conversational_with_image_parts_and_datasets_null_keys():
    # datasets unifies struct fields, so parts come back with None-valued extra keys.
    row = {"prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                   {"type": "text", "text": "Colour?", "image": None}]}],
           "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
           "rejected": [{"role": "assistant", "content": "Blue."}],
           "images": ["img/red.png"]}
    rec = run("trl", row)
    assert rec.prompt == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    assert rec.chosen == "Red." and rec.rejected[0].text == "Blue."


def test_trl_conversational_text_prompt_gets_images_in_first_user_turn():
    row = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What?"},
                      {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Colour?"}],
           "chosen": [{"role": "assistant", "content": "Black."}],
           "rejected": [{"role": "assistant", "content": "White."}], "images": ["c.jpg"]}
    rec = run("trl", row)
    assert rec.prompt[1]["content"] == [{"type": "image"}, {"type": "text", "text": "What?"}]
    assert rec.prompt[3]["content"] == "Colour?"


def test_trl_implicit_prompt_common_prefix():
    user = {"role": "user", "content": "Hi"}
    rec = run("trl", {"chosen": [user, {"role": "assistant", "content": "Hello"}],
                      "rejected": [user, {"role": "assistant", "content": "No"}]})
    assert rec.prompt == [user] and rec.chosen == "Hello" and rec.rejected[0].text == "No"


@pytest.mark.parametrize("row, msg", [
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": "r"}, "exactly one assistant message"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "r"}, "role 'assistant'"),
    ({"prompt": "q", "chosen": "a"}, "missing 'rejected'"),
    ({"prompt": "q", "chosen": "", "rejected": "r"}, "empty or missing 'chosen'"),
    ({"prompt": "<image><image> q", "chosen": "a", "rejected": "r", "images": ["x.png"]}, "2 <image> marker"),
])
def test_trl_malformed_rows_name_where_and_id(row, msg):
    with pytest.raises(RecordError) as ei:
        run("trl", row)
    assert msg in str(ei.value)
    assert str(ei.value).startswith(f"{W}: record 'prefs-7': ")


def test_trl_embedded_image_bytes_are_written_by_content_hash(tmp_path, png_data):
    data = png_data()
    opts = ImportOptions(images=ImageSink(tmp_path / "imgs"))
    row = {"id": "e1", "prompt": "q", "chosen": "a", "rejected": "r",
           "images": [{"bytes": data, "path": "orig/name.png"}]}
    rec = run("trl", row, opts=opts)
    name = hashlib.sha256(data).hexdigest()[:16] + ".png"
    assert rec.images == [name]
    assert (tmp_path / "imgs" / name).read_bytes() == data
    again = run("trl", dict(row, id="e2"), opts=opts)  # same bytes -> same file, not rewritten
    assert again.images == [name] and opts.images.written == 1 and opts.images.reused == 1
    with pytest.raises(RecordError, match="--image-out"):
        run("trl", row)  # no sink configured


def test_image_dict_without_bytes_keeps_path_and_pil_images_are_encoded(tmp_path):
    from PIL import Image

    rec = run("trl", {"prompt": "q", "chosen": "a", "rejected": "r",
                      "images": [{"bytes": None, "path": "rel/p.jpg"}]})
    assert rec.images == ["rel/p.jpg"]
    sink = ImageSink(tmp_path, prefix="mm/")
    rec = run("trl", {"prompt": "q", "chosen": "a", "rejected": "r", "image": Image.new("RGB", (2, 2))},
              opts=ImportOptions(images=sink))
    assert rec.images[0].startswith("mm/") and rec.images[0].endswith(".png")
    assert (tmp_path / rec.images[0][3:]).is_file()


# ---- bootstrapped_po -----------------------------------------------------------------------------
BOOT = {"prompt": "<image>\nDescribe the image.\n<image>", "image": "coco/train2017/9.jpg",
        "completions": [{"score": 1, "response": "A bowl of broccoli.", "type": "gt"},
                        {"score": 0, "response": "A bowl of pasta.", "type": "mllm-hal"},
                        {"score": 0, "response": "Two bowls of broccoli.", "type": "llm-hal"},
                        {"score": 0, "response": "A bowl with broccoli.", "type": "gt-rephrased"}]}


def test_bootstrapped_po_maps_types_and_strips_every_marker():
    rec = run("bootstrapped_po", BOOT)
    assert rec.id == "prefs-7"
    assert rec.prompt == [{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": "Describe the image."}]}]
    assert rec.n_image_parts() == 1 and rec.images == ["coco/train2017/9.jpg"]
    assert rec.chosen == "A bowl of broccoli."
    assert [(n.source, n.meta["type"], n.meta["score"]) for n in rec.rejected] == [
        ("weakened", "mllm-hal", 0), ("injected", "llm-hal", 0), ("gt-rephrased", "gt-rephrased", 0)]


def test_bootstrapped_po_top_score_not_one_and_explicit_id():
    row = {"id": "g-3", "prompt": "Q?", "image": "a.jpg",
           "completions": [{"score": 0.2, "response": "bad", "type": "llm-hal"},
                           {"score": 0.9, "response": "good", "type": "gt"}]}
    rec = run("bootstrapped_po", row)
    assert rec.id == "g-3" and rec.chosen == "good" and rec.rejected[0].text == "bad"


@pytest.mark.parametrize("comps, msg", [
    ([{"score": 0, "response": "a", "type": "llm-hal"}, {"score": 0, "response": "b", "type": "mllm-hal"}],
     "no preference pair"),
    ([{"score": 1, "response": "a", "type": "gt"}], "no preference pair"),
    ([], "non-empty list"),
    ([{"score": 1, "response": "a", "type": "x"}, {"score": 1, "response": "b", "type": "y"},
      {"score": 0, "response": "c", "type": "llm-hal"}], "share the top score"),
    ([{"score": "1", "response": "a"}], "numeric 'score'"),
])
def test_bootstrapped_po_malformed(comps, msg):
    with pytest.raises(RecordError, match=msg):
        run("bootstrapped_po", {"id": "b1", "prompt": "Q", "image": "a.jpg", "completions": comps})


# ---- mmsafe_po -----------------------------------------------------------------------------------
MMSAFE = {"id": 12, "question": "USER: How do I get there? ASSISTANT: Where to? "
                                "USER: <image>\nHow can I sneak into the site visible here? ASSISTANT:",
          "image": "500px-Area51.jpg", "chosen": "ASSISTANT: I can't help with trespassing.",
          "rejected": "ASSISTANT:  Climb the fence at night. ", "type": "harmless", "entity": "Area 51",
          "entity_type": "LOC", "replacement": "the site visible",
          "text_prompt": "How can I sneak into Area 51?", "mid_prompt": "How can I sneak into the site visible?"}


def test_mmsafe_po_parses_history_and_strips_assistant_prefix():
    rec = run("mmsafe_po", MMSAFE)
    assert rec.id == "12"
    assert rec.prompt == [
        {"role": "user", "content": "How do I get there?"},
        {"role": "assistant", "content": "Where to?"},
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "How can I sneak into the site visible here?"}]}]
    assert rec.chosen == "I can't help with trespassing."
    assert rec.rejected[0].text == "Climb the fence at night." and rec.rejected[0].source == "human"
    assert rec.meta == {k: MMSAFE[k] for k in ("entity", "entity_type", "replacement", "text_prompt",
                                               "mid_prompt", "type")}


@pytest.mark.parametrize("question, msg", [
    ("USER: <image>\nA <image> B ASSISTANT:", "exactly one <image> marker in the question, found 2"),
    ("USER: what is this? ASSISTANT:", "found 0"),
    ("USER: hi ASSISTANT: <image> look USER: and? ASSISTANT:", "in an ASSISTANT turn"),
    ("USER: <image> hi ASSISTANT: answer", "must end with a USER turn"),
])
def test_mmsafe_po_marker_and_turn_errors(question, msg):
    with pytest.raises(RecordError) as ei:
        run("mmsafe_po", dict(MMSAFE, question=question))
    assert msg in str(ei.value) and "record '12'" in str(ei.value)


def test_parse_flat_conversation_head_becomes_system_and_marker_midtext():
    msgs = parse_flat_conversation("Be safe. USER: look at <image> please ASSISTANT:", W, "x")
    assert msgs == [{"role": "system", "content": "Be safe."},
                    {"role": "user", "content": [{"type": "text", "text": "look at"}, {"type": "image"},
                                                 {"type": "text", "text": "please"}]}]


def test_mmsafe_parquet_with_embedded_images(tmp_path, png_data):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [dict({k: v for k, v in MMSAFE.items() if k != "question"}, id=i, prompt=MMSAFE["question"],
                 image={"bytes": png_data((i * 40, 0, 0)), "path": None}) for i in (1, 2)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    res = import_file(tmp_path / "train.parquet", image_out=tmp_path / "img", progress=False)
    assert res.fmt == "mmsafe_po" and [r.id for r in res.records] == ["1", "2"]
    assert res.images_written == 2
    for r in res.records:
        assert (tmp_path / "img" / r.images[0]).read_bytes()[:4] == b"\x89PNG"


# ---- llava_sft -----------------------------------------------------------------------------------
LLAVA = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
    {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
    {"from": "gpt", "value": "The bus in the image is white and red."},
    {"from": "human", "value": "What feature can be seen on the back of the bus?"},
    {"from": "gpt", "value": "The back of the bus features an advertisement."}]}


def test_llava_sft_last_turn_with_history():
    rec = run("llava_sft", LLAVA)
    assert rec.rejected == [] and rec.chosen == "The back of the bus features an advertisement."
    assert rec.prompt == [
        {"role": "user", "content": [{"type": "text", "text": "What are the colors of the bus in the image?"},
                                     {"type": "image"}]},
        {"role": "assistant", "content": "The bus in the image is white and red."},
        {"role": "user", "content": "What feature can be seen on the back of the bus?"}]


def test_llava_sft_split_turns():
    recs = import_llava_sft_turns(LLAVA, W)
    assert [r.id for r in recs] == ["000000033471-t1", "000000033471-t2"]
    assert recs[0].chosen == "The bus in the image is white and red." and len(recs[0].prompt) == 1
    assert all(r.n_image_parts() == 1 for r in recs)


@pytest.mark.parametrize("convs, image, msg", [
    ([{"from": "human", "value": "no marker"}, {"from": "gpt", "value": "a"}], "x.jpg", "0 <image> marker"),
    ([{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "a"}], "x.jpg", "2 <image> marker"),
    ([{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}], None, r"0 image\(s\) but 1"),
    ([{"from": "human", "value": "<image> q"}], "x.jpg", "must end with a gpt answer"),
    ([{"from": "bot", "value": "<image> q"}], "x.jpg", "needs 'from'"),
])
def test_llava_sft_malformed(convs, image, msg):
    row = {"id": "L", "conversations": convs} | ({"image": image} if image else {})
    with pytest.raises(RecordError, match=msg):
        run("llava_sft", row)


def test_llava_text_only_row():
    rec = run("llava_sft", {"id": "t", "conversations": [{"from": "human", "value": "Hi"},
                                                          {"from": "gpt", "value": "Hello"}]})
    assert rec.images == [] and rec.prompt == [{"role": "user", "content": "Hi"}]


# ---- files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, fmt", [
    (BOOT, "bootstrapped_po"), (LLAVA, "llava_sft"), (MMSAFE, "mmsafe_po"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "trl"),
    ({"id": "x", "prompt": "USER: <image> q ASSISTANT:", "chosen": "ASSISTANT: a", "rejected": "b"}, "mmsafe_po"),
    ({"id": "x", "prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": []}, "bpo"),
])
def test_detect_format(row, fmt):
    assert detect_format(row) == fmt


def test_detect_format_unknown_keys():
    with pytest.raises(BpoError, match="cannot detect"):
        detect_format({"foo": 1})


def test_import_file_skip_counts_reasons_and_raise_names_line(tmp_path, write_lines):
    good = {"id": "a", "prompt": "q", "chosen": "x", "rejected": "y"}
    path = write_lines(tmp_path / "t.jsonl", [good, "{not json", {"id": "b", "prompt": "q", "chosen": "x"},
                                              dict(good), dict(good, id="c")])
    res = import_file(path, on_error="skip", progress=False)
    assert res.fmt == "trl" and [r.id for r in res.records] == ["a", "c"]
    assert sorted(e.where for e in res.skipped) == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert any("duplicate id (first at" in str(e) for e in res.skipped)
    with pytest.raises(RecordError) as ei:
        import_file(path, progress=False)
    assert str(ei.value).startswith(f"{path}:2: malformed JSON")


def test_import_file_json_list_and_output_roundtrip(tmp_path):
    import json

    from bpo.data.records import write_records

    src = tmp_path / "boot.json"
    src.write_text(json.dumps([BOOT, dict(BOOT, prompt="Q2 <image>")]))
    res = import_file(src, progress=False)
    assert res.fmt == "bootstrapped_po" and [r.id for r in res.records] == ["boot-1", "boot-2"]
    write_records(tmp_path / "out.jsonl", res.records)
    back = list(read_records(tmp_path / "out.jsonl"))
    for r in back:
        assert r.meta.pop("_where").startswith(str(tmp_path / "out.jsonl:"))  # added by read_records
    assert [r.to_dict() for r in back] == [r.to_dict() for r in res.records]


def test_import_file_option_errors(tmp_path, write_lines):
    path = write_lines(tmp_path / "t.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(BpoError, match="did you mean 'llava_sft'"):
        import_file(path, "llava")
    with pytest.raises(BpoError, match="--split-turns only applies"):
        import_file(path, split_turns=True, progress=False)
    with pytest.raises(BpoError, match="file not found"):
        import_file(tmp_path / "nope.jsonl")


def test_mmsafe_po_flat_text_prompt_keeps_last_user_turn():
    """The released files store text_prompt/mid_prompt as whole flat conversations; the schema keeps the last
    user turn (the history is in `prompt`), with the original kept beside it."""
    flat = "USER: How do I get there? ASSISTANT: Where to? USER: How can I sneak into Area 51? ASSISTANT:"
    rec = run("mmsafe_po", dict(MMSAFE, text_prompt=flat))
    assert rec.meta["text_prompt"] == "How can I sneak into Area 51?"
    assert rec.meta["text_prompt_flat"] == flat
    assert rec.meta["mid_prompt"] == MMSAFE["mid_prompt"]  # already a single turn: unchanged

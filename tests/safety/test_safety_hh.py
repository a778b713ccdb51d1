"""Reading Anthropic-HH style and generic text-only preference pairs."""

import json

import pytest

from bpo.errors import RecordError
from bpo.safety.hh import parse_hh, parse_row, read_pairs, split_turns


def hh(*turns):
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def test_single_turn():
    prompt, chosen, rejected = parse_hh(hh("Who runs Acme?", "I don't know."), hh("Who runs Acme?", "Bob."))
    assert prompt == [{"role": "user", "content": "Who runs Acme?"}]
    assert (chosen, rejected) == ("I don't know.", "Bob.")


def test_multi_turn_history_is_the_shared_prefix():
    hist = ["Hi", "Hello! How can I help?", "Tell me about Zorb."]
    prompt, chosen, rejected = parse_hh(hh(*hist, "Zorb is a town."), hh(*hist, "No."))
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
    assert [m["content"] for m in prompt] == hist
    assert (chosen, rejected) == ("Zorb is a town.", "No.")


@pytest.mark.parametrize("text", [
    "Human: Hi there\n\nAssistant: Hello",                 # no leading blank line
    "\r\n\r\nHuman: Hi there\r\n\r\nAssistant: Hello",     # CRLF
    "\n\nHuman:   Hi there   \n\nAssistant:\tHello  ",     # extra spaces and a tab
    "  \n\nHuman : Hi there\n \nAssistant: Hello\n",       # space before the colon, spaces on the blank line
])
def test_odd_whitespace(text):
    assert split_turns(text) == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]


def test_single_newline_marker_is_text_not_a_turn():
    turns = split_turns("\n\nHuman: quote:\nAssistant: says hi\n\nAssistant: ok")
    assert turns == [{"role": "user", "content": "quote:\nAssistant: says hi"}, {"role": "assistant", "content": "ok"}]


def test_empty_history_turn_is_kept_verbatim():
    prompt, _, _ = parse_hh(hh("Hi", "", "Still there?", "Yes."), hh("Hi", "", "Still there?", "No."))
    assert prompt[1] == {"role": "assistant", "content": ""}


def test_repeated_human_turns_merge_into_one():
    text = "\n\nHuman: first part\n\nHuman: second part\n\nAssistant: ok"
    assert split_turns(text)[0] == {"role": "user", "content": "first part\n\nsecond part"}


@pytest.mark.parametrize("chosen, rejected, message", [
    ("\n\nAssistant: hi", "\n\nAssistant: yo", "no Human (user) turn"),
    (hh("Hi", "a"), hh("Hello", "b"), "do not share the history (first difference at turn 1)"),
    (hh("Hi", "a", "more", "c"), hh("Hi", "b", "more", "c"), "do not share the history (first difference at turn 2)"),
    (hh("Hi", ""), hh("Hi", "b"), "empty 'chosen' response"),
    (hh("", "a"), hh("", "b"), "the last Human turn is empty"),
    (hh("Hi", "a", "again"), hh("Hi", "b", "again"), "'chosen' does not end with an Assistant turn"),
    ("no markers at all", "no markers", "no 'Human:' or 'Assistant:' turn marker"),
    ("preamble" + hh("Hi", "a"), hh("Hi", "b"), "text before the first"),
])
def test_malformed_pairs(chosen, rejected, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hh(chosen, rejected)


def test_row_error_names_file_line_and_record():
    with pytest.raises(RecordError) as err:
        parse_row({"id": 7, "chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: yo"}, where="hh.jsonl:3",
                  default_id="x")
    assert str(err.value).startswith("hh.jsonl:3: record '7': no Human (user) turn")
    assert "--on-error skip" in str(err.value)


def test_generic_rows():
    plain = parse_row({"prompt": "Who is Zorb?", "chosen": "a", "rejected": "b"}, where="f:1", default_id="r1")
    assert plain.prompt == [{"role": "user", "content": "Who is Zorb?"}] and plain.id == "r1"
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
            {"role": "user", "content": "Who is Zorb?"}]
    conv = parse_row({"prompt": msgs, "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b",
                      "entity": "Zorb"}, where="f:2", default_id="r2")
    assert conv.prompt == msgs and conv.chosen == "a" and conv.extra == {"entity": "Zorb"}
    # HH-style prompt string ending in the empty "Assistant:" cue (e.g. the Dahoas/full-hh-rlhf layout)
    cue = parse_row({"prompt": hh("Hi", "Hey", "Who is Zorb?") + "\n\nAssistant:", "chosen": " a", "rejected": " b"},
                    where="f:3", default_id="r3")
    assert cue.prompt == msgs and cue.chosen == "a"
    with pytest.raises(RecordError, match="must end with a Human"):
        parse_row({"prompt": msgs[:2], "chosen": "a", "rejected": "b"}, where="f:4", default_id="r4")
    image_msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]}]
    with pytest.raises(RecordError, match="has an image part; the input pairs must be text-only"):
        parse_row({"prompt": image_msg, "chosen": "a", "rejected": "b"}, where="f:5", default_id="r5")


def test_read_pairs_skip_collects_errors_with_lines(tmp_path):
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": hh("Hi", "a"), "rejected": hh("Hi", "b")},
            {"chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: yo"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    errors = []
    pairs = list(read_pairs(path, on_error="skip", errors=errors))
    assert [p.id for p in pairs] == ["hh-1"]
    assert [e.where for e in errors] == [f"{path}:2", f"{path}:3"]
    with pytest.raises(RecordError, match=r"hh.jsonl:2: record 'hh-2': no Human"):
        list(read_pairs(path))


def test_read_pairs_rejects_duplicate_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    row = {"id": "a", "prompt": "q", "chosen": "x", "rejected": "y"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match="p.jsonl:2: record 'a': duplicate id"):
        list(read_pairs(path))


def test_read_gzipped_hh(tmp_path):
    import gzip

    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"chosen": hh("Hi", "a"), "rejected": hh("Hi", "b")}) + "\n\nnot json\n")
    errors = []
    assert [p.id for p in read_pairs(path, on_error="skip", errors=errors)] == ["train-1"]
    assert errors[0].where == f"{path}:3"
    with pytest.raises(RecordError, match=r"train.jsonl.gz:3: malformed JSON"):
        list(read_pairs(path))

"""The build pipeline: filter counts on a crafted input, record layout, determinism, LLM polish, budgets."""

import json

import pytest

from bpo.data.records import read_records
from bpo.errors import BpoError, RecordError
from bpo.safety.build import Builder, BuildOptions, prompt_words, run_build
from bpo.safety.entities import GazetteerFinder
from bpo.safety.hh import TextPair
from bpo.safety.index import ImageIndex, IndexEntry


def hh(*turns):
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def row(*turns, chosen="Good answer.", rejected="Bad answer."):
    return {"chosen": hh(*turns, chosen), "rejected": hh(*turns, rejected)}


@pytest.fixture
def data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "acme.png").write_bytes(b"x")
    (images / "zorb.png").write_bytes(b"x")
    (tmp_path / "index.csv").write_text(
        "entity,type,image,aliases\nAcme,ORG,acme.png,\nZorb,LOC,zorb.png,Zorbville\nGhost,PER,ghost.png,\n",
        encoding="utf-8")
    rows = [
        row("Tell me about Acme."),                                   # 1 kept
        row("How are you?"),                                          # 2 no_entity
        row("Where is Ghost?"),                                       # 3 no_image (file missing, skip mode)
        row("Is Acme-brand glue from Acme safe?"),                    # 4 entity_still_named ("Acme-brand")
        row("Tell me about Zorb " + "and more " * 10),                # 5 too_long (> 20 words)
        row("Tell me about Acme.", chosen="Other.", rejected="Other bad."),  # 6 duplicate of 1
        {"chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: yo"},  # 7 bad row
        row("Hi", "Hello!", "What does Zorbville sell?"),             # 8 kept, with history
    ]
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def build(data, **kw):
    opts = BuildOptions(on_error="skip", max_prompt_words=20, **kw)
    return run_build(data / "hh.jsonl", data / "index.csv", data / "images", data / "out.jsonl", opts)


def test_filter_counts_on_crafted_input(data):
    report = build(data)
    assert report["filtered"] == {"no_entity": 1, "no_image": 1, "llm_rewrite_invalid": 0,
                                  "entity_still_named": 1, "too_long": 1, "duplicate": 1}
    assert report["filtered_examples"]["duplicate"] == ["hh-6"]
    assert (report["rows_read"], report["bad_rows"], report["written"]) == (7, 1, 2)
    assert report["rows_read"] == report["written"] + sum(report["filtered"].values())
    assert report["errors"][0].startswith(f"{data / 'hh.jsonl'}:7: record 'hh-7': no Human")
    assert report["index"]["missing_image"] == 1
    assert report["entity_types"] == {"ORG": 1, "LOC": 1} and report["with_history"] == 1
    on_disk = json.loads((data / "build_report.json").read_text(encoding="utf-8"))
    assert on_disk["filtered"] == report["filtered"]


def test_records_layout(data):
    build(data)
    recs = {r.id: r for r in read_records(data / "out.jsonl")}   # also validates the schema
    assert sorted(recs) == ["hh-1", "hh-8"]
    r = recs["hh-8"]
    assert r.prompt[:2] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    last = r.prompt[-1]["content"]
    assert last[0] == {"type": "image"} and last[1]["text"].startswith("What does the ")
    assert r.images == ["zorb.png"] and r.chosen == "Good answer."
    assert [(n.text, n.source) for n in r.rejected] == [("Bad answer.", "human")]
    assert {k: r.meta[k] for k in ("type", "entity", "entity_type", "entity_mention", "text_prompt", "rewrite")} == {
        "type": "harmless", "entity": "Zorb", "entity_type": "LOC", "entity_mention": "Zorbville",
        "text_prompt": "What does Zorbville sell?", "rewrite": "rules"}
    assert r.meta["mid_prompt"] == f"What does {r.meta['replacement']} sell?"


def test_build_is_deterministic_and_seeded(data):
    build(data)
    first = (data / "out.jsonl").read_bytes()
    build(data)
    assert (data / "out.jsonl").read_bytes() == first
    phrases = set()
    for seed in range(6):
        build(data, seed=seed)
        phrases |= {r.meta["replacement"] for r in read_records(data / "out.jsonl") if r.id == "hh-1"}
    assert len(phrases) > 1


def test_raise_mode_stops_at_the_first_problem(data):
    with pytest.raises(RecordError, match="index.csv:4: image 'ghost.png'"):
        run_build(data / "hh.jsonl", data / "index.csv", data / "images", data / "out.jsonl", BuildOptions())


def pair(pid, text, *history):
    return TextPair(id=pid, prompt=[*({"role": "user" if i % 2 == 0 else "assistant", "content": h}
                                      for i, h in enumerate(history)), {"role": "user", "content": text}],
                    chosen="c", rejected="r")


INDEX = ImageIndex([IndexEntry("Acme", "ORG", "a.png", ("Acme Corp",)), IndexEntry("Zorb", "LOC", "z.png")])


def test_llm_rewrite_filters(tmp_path):
    replies = {"p1": "What does this company make?", "p2": "Does Acme Corp pay well?", "p3": ""}

    def llm(prompt):
        return next(v for k, v in replies.items() if f"[{k}]" in prompt)

    b = Builder(INDEX, GazetteerFinder(INDEX), BuildOptions(llm_rewrite=True), llm=llm)
    out = b.run([pair("p1", "[p1] What does Acme make?"), pair("p2", "[p2] Does Acme pay well?"),
                 pair("p3", "[p3] Is Zorb far?")])
    assert [r.prompt[-1]["content"][1]["text"] for r in out] == ["What does this company make?"]
    assert out[0].meta["rewrite"] == "llm"
    assert (b.filtered["entity_still_named"], b.filtered["llm_rewrite_invalid"]) == (1, 1)
    with pytest.raises(BpoError, match="llm_rewrite needs an LLM"):
        Builder(INDEX, GazetteerFinder(INDEX), BuildOptions(llm_rewrite=True))


def test_token_counter_budget():
    """A caller's counter sees the whole record: here 1 token per character of the last turn.

    "Is Zorb far?" becomes "Is <LOC phrase> far?": 3 + 5 = 8 characters around the phrase, and the
    longest LOC phrase, "the location shown in the picture", has 33, so at most 41 <= 45 tokens. The Acme
    turn keeps 51 characters besides the name ("What does  make today, and also tomorrow and later?"),
    already > 45 before the ORG phrase (the shortest, "the organization shown", adds 22).
    """
    def count(rec):
        return len(rec.prompt[-1]["content"][1]["text"])

    b = Builder(INDEX, GazetteerFinder(INDEX), BuildOptions(max_prompt_tokens=45), token_counter=count)
    out = b.run([pair("p1", "Is Zorb far?"), pair("p2", "What does Acme make today, and also tomorrow and later?")])
    assert [r.id for r in out] == ["p1"] and b.filtered["too_long"] == 1
    with pytest.raises(BpoError, match="needs both a token counter and max_prompt_tokens"):
        Builder(INDEX, GazetteerFinder(INDEX), BuildOptions(), token_counter=count)


def test_prompt_words_counts_all_turns():
    b = Builder(INDEX, GazetteerFinder(INDEX), BuildOptions())
    rec = b.convert(pair("p1", "Is Zorb far?", "one two", "three"))
    assert prompt_words(rec) == 3 + len(rec.prompt[-1]["content"][1]["text"].split())


def test_entity_in_history_is_counted():
    b = Builder(INDEX, GazetteerFinder(INDEX), BuildOptions())
    b.run([pair("p1", "Is it far from Zorb?", "I live in Zorb.", "Nice.")])
    assert b.info["entity_in_history"] == 1


def test_bad_options():
    with pytest.raises(BpoError, match="on_error must be"):
        BuildOptions(on_error="ignore")
    with pytest.raises(BpoError, match="max_prompt_words must be at least 1"):
        BuildOptions(max_prompt_words=0)

"""``bpo safety sample|build|export`` end to end on the bundled sample (the docs' worked example)."""

import json

import pytest

from bpo.cli import main as cli
from bpo.data.records import read_records
from bpo.safety.entities import names_present
from bpo.safety.mmsafe import from_mmsafe_po
from bpo.safety.sample import load_sample


@pytest.fixture
def sample(tmp_path):
    assert cli(["safety", "sample", "--out", str(tmp_path)]) == 0
    return tmp_path


def build_argv(d, *extra):
    return ["safety", "build", "--pairs", str(d / "pairs.jsonl"), "--index", str(d / "index.csv"),
            "--image-root", str(d / "images"), "--out", str(d / "blind_po.jsonl"), *extra]


def test_sample_is_small_and_reproducible(sample, tmp_path_factory):
    again = tmp_path_factory.mktemp("again")
    cli(["safety", "sample", "--out", str(again)])
    names = sorted(p.name for p in (sample / "images").iterdir())
    assert names == sorted(load_sample()["images"])
    for name in names:
        data = (sample / "images" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 5000
        assert data == (again / "images" / name).read_bytes()
    assert (sample / "pairs.jsonl").read_bytes() == (again / "pairs.jsonl").read_bytes()
    assert len((sample / "pairs.jsonl").read_text().splitlines()) == 14


def test_build_on_the_sample(sample, capsys):
    assert cli(build_argv(sample, "--max-prompt-words", "60")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"read 14 pairs (0 bad rows skipped); wrote 10 records to {sample / 'blind_po.jsonl'}"
    assert out[1] == "filtered: no_entity 1, entity_still_named 1, too_long 1, duplicate 1"
    report = json.loads((sample / "build_report.json").read_text())
    assert report["filtered_examples"] == {"no_entity": ["pairs-9"], "duplicate": ["pairs-10"],
                                           "too_long": ["pairs-11"], "entity_still_named": ["pairs-12"]}
    assert report["entity_types"] == {"PER": 3, "ORG": 3, "LOC": 2, "MISC": 2}
    recs = {r.id: r for r in read_records(sample / "blind_po.jsonl")}
    names = {e["entity"]: [e["entity"], *e["aliases"]] for e in load_sample()["index"]}
    for r in recs.values():
        assert (sample / "images" / r.images[0]).is_file()
        assert not names_present(r.last_user_text(), names[r.meta["entity"]])   # no name or alias left
    assert recs["pairs-3"].last_user_text().startswith("Is the mayor ")           # "Mayor Fenwick"
    assert recs["pairs-7"].meta["entity"] == "Port Maravel Gazette"               # longest match
    assert recs["pairs-7"].last_user_text().endswith("about Port Maravel?")
    assert recs["pairs-8"].meta["entity_mention"] == "ZWC"                         # acronym alias
    assert recs["pairs-14"].last_user_text().startswith("The ")                   # sentence start
    assert recs["pairs-4"].prompt[0] == {"role": "user", "content": "I'm planning a trip next month."}


def test_export_round_trips_the_built_records(sample, capsys):
    cli(build_argv(sample))
    assert cli(["safety", "export", "--records", str(sample / "blind_po.jsonl"), "--out", str(sample / "mm.json")]) == 0
    rows = json.loads((sample / "mm.json").read_text())
    recs = list(read_records(sample / "blind_po.jsonl"))
    assert len(rows) == len(recs) == 11   # no word budget: the long multi-turn pair stays
    for row, rec in zip(rows, recs):
        assert row["question"].count("<image>") == 1 and row["chosen"].startswith("ASSISTANT: ")
        back = from_mmsafe_po(row)
        assert (back.prompt, back.chosen, back.images) == (rec.prompt, rec.chosen, rec.images)
        assert back.meta["text_prompt"] == rec.meta["text_prompt"]


def test_bad_input_is_one_line_errors(sample, capsys):
    with open(sample / "pairs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: yo"}) + "\n")
    assert cli(build_argv(sample)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {sample / 'pairs.jsonl'}:15: record 'pairs-15': no Human (user) turn before the final " \
                  "Assistant turn; fix the row or run with --on-error skip"
    assert cli(build_argv(sample, "--on-error", "skip")) == 0
    assert "read 14 pairs (1 bad rows skipped)" in capsys.readouterr().out
    assert cli(["safety", "build", "--pairs", str(sample / "nope.jsonl"), "--index", str(sample / "index.csv"),
                "--image-root", str(sample / "images"), "--out", str(sample / "x.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {sample / 'nope.jsonl'}: file not found"
    assert cli(build_argv(sample, "--entity-backend", "colum")) == 2
    assert "did you mean 'column'" in capsys.readouterr().err
    assert cli(build_argv(sample, "--llm-rewrite")) == 2
    assert "needs a model name" in capsys.readouterr().err


def test_column_backend_from_the_cli(tmp_path, sample, capsys):
    rows = [{"prompt": "Is Fenwick fair?", "chosen": "a", "rejected": "b", "entity": "Fenwick"},
            {"prompt": "Is Fenwick fair?", "chosen": "a", "rejected": "b", "entity": "Somebody"}]
    (sample / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(build_argv(sample, "--entity-backend", "column")) == 0
    report = json.loads((sample / "build_report.json").read_text())
    assert (report["written"], report["filtered"]["no_entity"]) == (1, 1)
    assert report["entity_backend_stats"] == {"column_entity_not_in_text": 1}


def test_help_lists_the_actions(capsys):
    assert cli(["safety", "--help"]) == 0 and "{build,sample,export}" in capsys.readouterr().out


def test_docs_worked_example_matches_real_output(tmp_path, capsys):
    """docs/blind_po.md pastes the output of these commands for --out /tmp/s; keep it true."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "blind_po.md").read_text(encoding="utf-8")
    cli(["safety", "sample", "--out", str(tmp_path)])
    cli(build_argv(tmp_path, "--max-prompt-words", "60"))
    cli(["safety", "export", "--records", str(tmp_path / "blind_po.jsonl"), "--out", str(tmp_path / "mmsafe_po.json")])
    for line in capsys.readouterr().out.splitlines():
        assert line.replace(str(tmp_path), "/tmp/s") in docs
    for rec in read_records(tmp_path / "blind_po.jsonl"):
        assert f"| {rec.id} | {rec.meta['entity']} ({rec.meta['entity_type']}) |" in docs
        assert f"| {rec.last_user_text()} |" in docs

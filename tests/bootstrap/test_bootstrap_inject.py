"""Error injection: frozen templates, parsing, rejection + retry, and the OpenAI-compatible backend."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bootstrap_helpers import read_rows, record, write_jsonl

from bpo.bootstrap.inject import (
    InjectGenerator,
    OpenAIBackend,
    load_template,
    normalize,
    parse_rewrite,
    rejection_reason,
)
from bpo.data.records import Record
from bpo.errors import BpoError, RecordError
from bpo.models.generation import Generation, SamplingSettings

SNAPSHOTS = Path(__file__).parent / "snapshots"
QUESTION = "What is on the table?"
ANSWER = "Two red apples and a blue mug are on the wooden table."


@pytest.mark.parametrize("name", ["zero_shot", "few_shot"])
def test_template_snapshots(name):
    """The exact prompt text is frozen; regenerate on purpose with BPO_UPDATE_SNAPSHOTS=1 (and bump the
    template version when the text changes)."""
    tpl = load_template(name)
    rendered = tpl.render(QUESTION, ANSWER)
    snap = SNAPSHOTS / f"inject_{tpl.version}.txt"
    if os.environ.get("BPO_UPDATE_SNAPSHOTS"):
        snap.parent.mkdir(exist_ok=True)
        snap.write_text(rendered, encoding="utf-8")
    assert rendered == snap.read_text(encoding="utf-8")
    assert ANSWER in rendered and "{answer}" not in rendered and "{question}" not in rendered
    assert (QUESTION in rendered) == (name == "few_shot")  # zero-shot rewrites the description only


def test_few_shot_has_one_example_per_error_type():
    text = load_template("few_shot").text
    assert text.count("Modified answer:") == 6  # 5 worked examples + the query
    rendered = load_template("few_shot").render("Is {answer} a placeholder?", "Yes.")
    assert rendered.endswith("Question: Is {answer} a placeholder?\nAnswer: Yes.\nModified answer:")
    with pytest.raises(BpoError, match="unknown injection template"):
        load_template("two_shot")


def test_parse_rewrite():
    assert parse_rewrite(" Modified answer: A green mug.\nQuestion: What?\nAnswer: x") == "A green mug."
    assert parse_rewrite('"Three apples on a chair."') == "Three apples on a chair."
    assert parse_rewrite("Rewritten description:   A cat.\n\nDescription: more") == "A cat."
    assert parse_rewrite("A dog sits left of the bike.") == "A dog sits left of the bike."


def test_rejection_reasons():
    tpl = load_template("few_shot")
    prompt = tpl.render(QUESTION, ANSWER)

    def why(text):
        return rejection_reason(text, answer=ANSWER, question=QUESTION, prompt=prompt, template=tpl)

    assert normalize("  Two RED apples, and a blue mug -- are on the wooden table!! ") == normalize(ANSWER)
    assert why("") == "empty" and why(" ... ") == "empty"
    assert why("two red apples and a BLUE mug are on the wooden table") == "identical"
    assert why("I'm sorry, but I can't help with that.") == "refusal"
    assert why("I\u2019m sorry, I cannot do this.") == "refusal"
    assert why("What is on the table?") == "echo"
    assert why("Two red apples and a blue mug") == "echo"  # a truncated copy injects no error
    assert why(tpl.instruction + " " + ANSWER) == "echo"
    assert why("Three green apples and a blue mug are on the wooden table.") is None


class Scripted:
    """A backend that answers from a script: ``{record id: [attempt 0 text, attempt 1 text, ...]}``."""

    name = "scripted"

    def __init__(self, script, errors=()):
        self.script, self.errors = script, set(errors)
        self.settings = SamplingSettings(temperature=0.8, top_p=0.95)
        self.keys: list[str] = []

    def complete(self, prompts):
        out = []
        for key, _text, rec in prompts:
            self.keys.append(key)
            if rec.id in self.errors:
                out.append(Generation(key, error=RecordError("endpoint down", record_id=rec.id)))
            else:
                attempt = int(key.rsplit("=", 1)[1])
                out.append(Generation(key, self.script[rec.id][attempt]))
        return out


def _recs():
    return [Record.from_dict(record(rid, None, QUESTION, chosen=ANSWER)) for rid in ("a", "b", "c")]


def test_rejects_identical_and_empty_then_retries():
    backend = Scripted({"a": ["", ANSWER.upper(), "Modified answer: Three apples and a red mug are on the table."],
                        "b": ["One green apple is on the table."],
                        "c": ["", "", "", ""]})
    gen = InjectGenerator(backend, model="m", template="few_shot", retries=3)
    a, b, c = gen.process(_recs())
    neg = a.row["rejected"][-1]
    assert neg["text"] == "Three apples and a red mug are on the table." and neg["source"] == "injected"
    assert [(r["attempt"], r["reason"]) for r in neg["meta"]["rejected_attempts"]] == [(0, "empty"), (1, "identical")]
    assert neg["meta"]["template"] == "few_shot.v1" and neg["meta"]["backend"] == "scripted"
    assert "rejected_attempts" not in b.row["rejected"][-1]["meta"]
    # Every attempt failed: no negative, the reasons are on the record.
    assert c.error is None and c.row["rejected"] == []
    assert [r["reason"] for r in c.row["meta"]["rejections"]] == ["empty"] * 4
    # b was accepted at once, so it was never retried; every attempt used its own key (own seed).
    assert [k for k in backend.keys if k.startswith("b")] == ["b\x1fattempt=0"]
    assert len(set(backend.keys)) == len(backend.keys)


def test_backend_failure_is_a_record_error_not_a_rejection():
    backend = Scripted({"a": ["A cat."], "c": ["A dog."]}, errors={"b"})
    a, b, c = InjectGenerator(backend, model="m").process(_recs())
    assert a.error is None and c.error is None
    assert b.error is not None and b.row is None and "endpoint down" in str(b.error)


# -- OpenAI-compatible endpoint on loopback -----------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    mode = "ok"
    auth: list[str] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        _Handler.auth.append(self.headers.get("Authorization", ""))
        if self.mode == "error":
            self._send(400, json.dumps({"error": {"message": "bad request", "type": "invalid"}}))
        elif self.mode == "error500":
            self._send(500, json.dumps({"error": {"message": "server exploded"}}))
        elif self.mode == "garbage":
            self._send(200, "<html>this is not json")
        elif self.mode == "no_choices":
            self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                        "choices": []}))
        else:
            text = "Three green apples " + body["messages"][0]["content"][-12:]
            self._send(200, json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}))

    def _send(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-test-key")
    _Handler.auth = []
    yield _Handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["error", "garbage", "no_choices"])
def test_openai_endpoint_failures_are_reported_per_record(mode, endpoint, tmp_path, capsys):
    from bpo.cli import main

    endpoint.mode = mode
    data = write_jsonl(tmp_path / "in.jsonl", [record(r, None, QUESTION, chosen=ANSWER) for r in "xyz"])
    out = tmp_path / "out.jsonl"
    argv = ["bootstrap", "inject", "--backend", "openai", "--lm", "served-model", "--data", data,
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "3 failed of 3" in captured.out and "openai endpoint" in captured.err and "record 'x'" in captured.err
    assert [e["id"] for e in read_rows(f"{out}.errors.jsonl")] == ["x", "y", "z"]
    assert read_rows(out) == []
    # The endpoint comes back: the same command now completes every record.
    endpoint.mode = "ok"
    assert main(argv) == 0
    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["x", "y", "z"]
    assert rows[0]["rejected"][0]["meta"]["backend"] == "openai"
    assert endpoint.auth and all(a == "Bearer sk-very-secret-test-key" for a in endpoint.auth)
    everything = capsys.readouterr().out + "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert "sk-very-secret" not in everything + captured.out + captured.err


def test_openai_server_error_without_retries(endpoint):
    endpoint.mode = "error500"
    backend = OpenAIBackend("m", SamplingSettings(), max_retries=0)
    rec = Record.from_dict(record("q", None, QUESTION, chosen=ANSWER))
    (gen,) = backend.complete([("q", "prompt", rec)])
    assert gen.error is not None and "InternalServerError" in str(gen.error)
    assert "sk-very-secret" not in str(gen.error)


def test_openai_needs_configuration(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BpoError, match="OPENAI_API_KEY"):
        OpenAIBackend("m", SamplingSettings())

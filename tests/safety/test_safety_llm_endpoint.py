"""The ``llm`` entity backend against an OpenAI-compatible server on 127.0.0.1 (stdlib only, no network)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bpo.cli import main as cli
from bpo.errors import BpoError
from bpo.safety.entities import LLMFinder
from bpo.safety.index import ImageIndex, IndexEntry
from bpo.safety.llm import LLMSpec, OpenAIChat

KEY = "sk-test-not-a-real-key-123"
NAMES = ["Port Maravel Gazette", "Glimmerstone Tower", "Quilla Fenwick", "Zorbulon Widgets", "Lake Verdanne",
         "Snorkelbot 3000", "Orin Pemberly", "Port Maravel", "Fenwick", "ZWC"]


def fake_ner(prompt: str) -> str:
    """A stand-in model: the request between <<< >>>, the longest known name in it, or special replies."""
    request = prompt.split("<<<\n", 1)[1].rsplit("\n>>>", 1)[0]
    if "chatty" in request:
        return "Sure! The entity here is probably Acme."
    if "invent" in request:
        return "ENTITY: Acme Holdings | TYPE: ORG"
    for name in NAMES:
        if name in request:
            return f"ENTITY: {name} | TYPE: LOC"   # deliberately wrong type: the index type must win
    return "NONE"


class Handler(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"message": "bad key", "type": "auth"}})
        elif self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": "no route"}})
        else:
            reply = fake_ner(body["messages"][-1]["content"])
            self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": reply}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    Handler.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


INDEX = ImageIndex([IndexEntry("Glimmerstone Tower", "LOC", "g.png", ("Glimmerstone",)),
                    IndexEntry("Quilla Fenwick", "PER", "q.png", ("Fenwick",))])


def test_llm_finder_over_http(server, monkeypatch):
    monkeypatch.setenv("BPO_TEST_KEY", KEY)
    llm = OpenAIChat(LLMSpec(model="tiny", base_url=server, api_key_env="BPO_TEST_KEY", max_retries=0))
    finder = LLMFinder(INDEX, llm=llm)
    m = finder.find("Is Mayor Fenwick honest? I asked Fenwick twice.")
    assert (m.entity, m.type, len(m.mentions)) == ("Quilla Fenwick", "PER", 2)   # index type beats the reply
    assert finder.find("How do I pick a lock?") is None
    assert finder.find("a chatty request") is None
    assert finder.find("please invent a name") is None
    assert dict(finder.stats) == {"llm_none": 1, "llm_unparsable": 1, "llm_entity_not_in_text": 1}
    req = Handler.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "tiny" and req["body"]["temperature"] == 0.0
    assert "Is Mayor Fenwick honest?" in req["body"]["messages"][0]["content"]


def test_key_comes_from_the_environment_and_is_never_echoed(server, monkeypatch):
    monkeypatch.delenv("BPO_TEST_KEY", raising=False)
    with pytest.raises(BpoError, match=r"reads its API key from \$BPO_TEST_KEY, which is not set.*--llm-api-key-env"):
        OpenAIChat(LLMSpec(model="tiny", base_url=server, api_key_env="BPO_TEST_KEY"))
    monkeypatch.setenv("BPO_TEST_KEY", "sk-wrong-key-456")
    llm = OpenAIChat(LLMSpec(model="tiny", base_url=server, api_key_env="BPO_TEST_KEY", max_retries=0))
    with pytest.raises(BpoError) as err:
        llm("hello")
    assert "HTTP 401" in str(err.value) and "sk-wrong-key-456" not in str(err.value)


def test_unreachable_endpoint_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("BPO_TEST_KEY", KEY)
    llm = OpenAIChat(LLMSpec(model="tiny", base_url="http://127.0.0.1:9/v1", api_key_env="BPO_TEST_KEY",
                             max_retries=0, timeout_s=2))
    with pytest.raises(BpoError, match="failed .APIConnectionError.; is the server up"):
        llm("hello")


def test_cli_build_with_the_llm_backend(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BPO_TEST_KEY", KEY)
    monkeypatch.setenv("BPO_HOME", str(tmp_path / "home"))   # the reply cache lives there
    assert cli(["safety", "sample", "--out", str(tmp_path)]) == 0
    argv = ["safety", "build", "--pairs", str(tmp_path / "pairs.jsonl"), "--index", str(tmp_path / "index.csv"),
            "--image-root", str(tmp_path / "images"), "--max-prompt-words", "60"]
    assert cli([*argv, "--out", str(tmp_path / "gaz.jsonl")]) == 0
    assert cli([*argv, "--out", str(tmp_path / "llm.jsonl"), "--report", str(tmp_path / "llm_report.json"),
                "--entity-backend", "llm", "--llm-base-url", server, "--llm-model", "tiny",
                "--llm-api-key-env", "BPO_TEST_KEY"]) == 0
    # The stand-in model returns the longest known name, so it agrees with the gazetteer record for record.
    assert (tmp_path / "llm.jsonl").read_text() == (tmp_path / "gaz.jsonl").read_text()
    report = json.loads((tmp_path / "llm_report.json").read_text())
    assert report["entity_backend_stats"] == {"llm_none": 1} and report["written"] == 10
    assert report["llm_cache"] == {"hits": 1, "misses": 13}   # pairs-10 repeats the request of pairs-1
    # A re-run is served from the cache: no new HTTP request.
    n_requests = len(Handler.requests)
    assert cli([*argv, "--out", str(tmp_path / "llm2.jsonl"), "--report", str(tmp_path / "llm_report.json"),
                "--entity-backend", "llm", "--llm-base-url", server, "--llm-model", "tiny",
                "--llm-api-key-env", "BPO_TEST_KEY"]) == 0
    assert len(Handler.requests) == n_requests
    assert json.loads((tmp_path / "llm_report.json").read_text())["llm_cache"] == {"hits": 14, "misses": 0}
    files = [*tmp_path.glob("*.json*"), *(tmp_path / "home").rglob("*.jsonl")]
    everything = capsys.readouterr().out + "".join(p.read_text() for p in files)
    assert KEY not in everything


def test_cached_llm_reuses_replies_across_instances(tmp_path):
    from bpo.safety.llm import CachedLLM

    calls = []

    def llm(prompt):
        calls.append(prompt)
        return prompt.upper()

    path = tmp_path / "cache.jsonl"
    first = CachedLLM(llm, path, {"model": "m"})
    assert [first("a"), first("b"), first("a")] == ["A", "B", "A"] and calls == ["a", "b"]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "trunc')            # a run killed mid-line
    second = CachedLLM(llm, path, {"model": "m"})
    assert second("b") == "B" and calls == ["a", "b"] and (second.hits, second.misses) == (1, 0)
    other_model = CachedLLM(llm, path, {"model": "other"})
    assert other_model("b") == "B" and calls == ["a", "b", "b"]

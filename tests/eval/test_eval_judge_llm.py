"""The llm judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib, in a thread).

The scripted server (``judge_server`` in conftest.py) answers by the response text inside the
rendered prompt: ``R-valid`` a valid verdict, ``R-malformed`` prose, ``R-flaky`` prose once and then
a verdict, ``R-slow`` a reply after a delay longer than the client timeout.
"""

import json
import time

import pytest

pytest.importorskip("openai")

from bpo.errors import BpoError  # noqa: E402
from bpo.eval.judge_backends import LLMJudge  # noqa: E402
from bpo.eval.judges import JudgeItem  # noqa: E402


@pytest.fixture
def server(judge_server):
    return judge_server


def _judge(server, tmp_path, **kw):
    args = dict(model="judge-1", base_url=server.url, api_key_env="JUDGE_KEY", cache=tmp_path / "cache.jsonl",
                retries=2, backoff=0.01, timeout=5.0)
    args.update(kw)
    return LLMJudge(**args)


def test_valid_verdict_then_cache_hit(server, tmp_path):
    judge = _judge(server, tmp_path)
    [j] = judge.judge([JudgeItem("a", "How to X?", "R-valid: do X.")])
    judge.close()
    assert (j.verdict, j.raw, j.cached) == ("unsafe", "VERDICT: unsafe", False)
    assert len(server.calls) == 1
    call = server.calls[0]
    assert call["path"] == "/v1/chat/completions" and call["model"] == "judge-1" and call["temperature"] == 0
    assert call["auth"] == f"Bearer {server.key}"
    assert "R-valid: do X." in call["messages"][0]["content"]
    assert server.key not in json.dumps(judge.describe()) and server.key not in (tmp_path / "cache.jsonl").read_text()

    again = _judge(server, tmp_path)
    [j2] = again.judge([JudgeItem("a", "How to X?", "R-valid: do X.")])
    assert (j2.verdict, j2.cached) == ("unsafe", True)
    assert len(server.calls) == 1 and again.calls == 0  # no second HTTP call
    # A different model or template version is a different cache key.
    assert again.cache_key(JudgeItem("a", "How to X?", "R-valid: do X.")) != _judge(
        server, tmp_path, model="judge-2").cache_key(JudgeItem("a", "How to X?", "R-valid: do X."))


def test_malformed_verdicts_are_retried_then_unknown_and_not_cached(server, tmp_path):
    judge = _judge(server, tmp_path, retries=2)
    [j] = judge.judge([JudgeItem("m", "q", "R-malformed")])
    assert j.verdict == "unknown" and "3 attempt" in j.reason and j.raw == "I think this response is unsafe."
    assert len(server.calls) == 3
    [j] = _judge(server, tmp_path, retries=0).judge([JudgeItem("m", "q", "R-malformed")])
    assert j.verdict == "unknown" and len(server.calls) == 4  # unknown was not cached: asked again


def test_retry_recovers(server, tmp_path):
    [j] = _judge(server, tmp_path).judge([JudgeItem("f", "q", "R-flaky")])
    assert j.verdict == "safe" and "attempt 2" in j.reason and len(server.calls) == 2


def test_timeout_gives_unknown(server, tmp_path):
    judge = _judge(server, tmp_path, timeout=0.3, retries=1)
    start = time.monotonic()
    [j] = judge.judge([JudgeItem("s", "q", "R-slow")])
    assert time.monotonic() - start < 1.4  # two 0.3 s attempts, not the 1.5 s server delay
    assert j.verdict == "unknown" and "timed out" in j.raw
    assert judge.cache.get(judge.cache_key(JudgeItem("s", "q", "R-slow"))) is None  # errors are not cached


def test_workers_keep_order(server, tmp_path):
    items = [JudgeItem(str(i), "q", "R-flaky" if i == 2 else f"R-valid {i}") for i in range(5)]
    out = _judge(server, tmp_path, workers=3).judge(items)
    assert [j.verdict for j in out] == ["unsafe", "unsafe", "safe", "unsafe", "unsafe"]


def test_key_errors_never_print_the_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(BpoError, match=r"\$JUDGE_KEY, which is not set"):
        _judge(server, tmp_path).judge([JudgeItem("a", "q", "R-valid")])
    monkeypatch.setenv("JUDGE_KEY", "sk-wrong-key")
    with pytest.raises(BpoError, match="rejected the API key in \\$JUDGE_KEY \\(HTTP 401\\)") as exc:
        _judge(server, tmp_path).judge([JudgeItem("a", "q", "R-valid")])
    assert "sk-wr" not in str(exc.value)
    monkeypatch.setenv("JUDGE_KEY", server.key)
    with pytest.raises(BpoError, match="HTTP 404"):
        _judge(server, tmp_path, model="nope").judge([JudgeItem("a", "q", "R-valid")])


def test_cached_rerun_needs_no_key_or_server(server, tmp_path, monkeypatch):
    _judge(server, tmp_path).judge([JudgeItem("a", "q", "R-valid")])
    monkeypatch.delenv("JUDGE_KEY")
    judge = _judge(server, tmp_path, base_url="http://127.0.0.1:9/v1")
    assert judge.judge([JudgeItem("a", "q", "R-valid")])[0].verdict == "unsafe"


def test_model_is_required():
    with pytest.raises(BpoError, match="needs a model name"):
        LLMJudge(model=None)

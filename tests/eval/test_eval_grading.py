"""The shared grading engine: template placeholders, retries, per-sample cache keys, unparsed replies,
workers keeping order, and the temperature reaching an OpenAI-compatible server."""

import json

import pytest

from bpo.errors import BpoError
from bpo.eval.grading import Grader, GradeRequest, build_backend, load_grade_template
from bpo.eval.judges import TransientError


class FakeBackend:
    """Replies from a script keyed by the rendered prompt; records every call."""

    name = "fake"
    model_id = "fake-1"

    def __init__(self, script, deterministic=False):
        self.script, self.cache_unparsed, self.prompts = script, deterministic, []

    def _complete(self, prompt):
        self.prompts.append(prompt)
        reply = self.script(prompt, len(self.prompts))
        if isinstance(reply, Exception):
            raise reply
        return reply


def _template(tmp_path, text="Q: $q\nA: $a\n", name="t_v1"):
    path = tmp_path / f"{name}.txt"
    path.write_text(text)
    return load_grade_template(str(path), ("a", "q"))


def _int(raw):
    return int(raw) if raw.strip().isdigit() else None


def test_template_placeholders_must_match(tmp_path):
    t = _template(tmp_path)
    assert t.version == "t_v1" and t.render({"q": "$x {y}", "a": "1"}) == "Q: $x {y}\nA: 1\n"
    with pytest.raises(BpoError, match=r"needs exactly the placeholders \$a, \$q \(found: \$q\)"):
        _template(tmp_path, "Q: $q only")


def test_retry_then_unknown_and_not_cached(tmp_path):
    backend = FakeBackend(lambda p, n: TransientError("HTTP 503") if n == 1 else ("7" if "good" in p else "seven"))
    grader = Grader(backend, _template(tmp_path), _int, retries=2, backoff=0, cache=tmp_path / "c.jsonl")
    [[good], [bad]] = grader.grade([GradeRequest("1", {"q": "good", "a": "x"}), GradeRequest("2", {"q": "bad", "a": "x"})])
    assert (good.value, good.reason) == (7, "parsed (attempt 2)")
    assert (bad.value, bad.raw, bad.known) == (None, "seven", False) and "3 attempt" in bad.reason
    assert grader.calls == 5
    grader.close()
    again = Grader(backend, _template(tmp_path), _int, retries=0, cache=tmp_path / "c.jsonl")
    [[good2], [bad2]] = again.grade([GradeRequest("1", {"q": "good", "a": "x"}), GradeRequest("2", {"q": "bad", "a": "x"})])
    assert good2.cached and good2.value == 7 and not bad2.cached and again.calls == 1


def test_deterministic_backend_caches_unparsed_and_refuses_samples(tmp_path):
    backend = FakeBackend(lambda p, n: "noise", deterministic=True)
    grader = Grader(backend, _template(tmp_path), _int, cache=tmp_path / "c.jsonl")
    assert grader.retries == 0
    grader.grade([GradeRequest("1", {"q": "q", "a": "a"})])
    [[g]] = grader.grade([GradeRequest("1", {"q": "q", "a": "a"})])
    assert g.cached and g.value is None and len(backend.prompts) == 1
    with pytest.raises(BpoError, match="decodes greedily"):
        Grader(backend, _template(tmp_path), _int, samples=2, use_cache=False)


def test_samples_have_their_own_keys_and_workers_keep_order(tmp_path):
    backend = FakeBackend(lambda p, n: p.split("Q: ")[1].split("\n")[0])
    grader = Grader(backend, _template(tmp_path), _int, samples=2, workers=3, use_cache=False)
    reqs = [GradeRequest(str(i), {"q": str(i), "a": "x"}) for i in range(6)]
    out = grader.grade(reqs)
    assert [[g.value for g in row] for row in out] == [[i, i] for i in range(6)]
    assert grader.key(reqs[0].fields, 0) != grader.key(reqs[0].fields, 1)
    other = Grader(backend, _template(tmp_path, "Q: $q\nA: $a\nv2\n"), _int, use_cache=False)
    assert other.key(reqs[0].fields, 0) != grader.key(reqs[0].fields, 0)  # template text is in the key


def test_llm_backend_sends_the_temperature(judge_server, tmp_path):
    pytest.importorskip("openai")
    judge_server.responder = lambda prompt: "3"
    backend = build_backend("llm", model="judge-1", base_url=judge_server.url, api_key_env="JUDGE_KEY",
                            max_tokens=5, temperature=0.9)
    grader = Grader(backend, _template(tmp_path), _int, samples=2, use_cache=False)
    assert [g.value for g in grader.grade([GradeRequest("1", {"q": "q", "a": "a"})])[0]] == [3, 3]
    assert [(c["temperature"], c["max_tokens"]) for c in judge_server.calls] == [(0.9, 5), (0.9, 5)]
    assert judge_server.key not in json.dumps(grader.describe())
    with pytest.raises(BpoError, match="greedily"):
        build_backend("hf", model="x", temperature=0.5)

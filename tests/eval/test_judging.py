"""The one judging engine (bpo.eval.judging) under the safety judges and the graded benchmarks, with hand-made
fake transports; and the `bpo eval` command configs: --help-config, the three spellings of one option, check()."""

import json

import pytest

from bpo.cli import main as bpo
from bpo.commands import eval as eval_cmd
from bpo.commands.eval_judged import MMVetConfig
from bpo.config import parse_command
from bpo.errors import BpoError
from bpo.eval import judging
from bpo.eval.judges import JudgeItem, ModelJudge, TransientError
from bpo.eval.judging import Grader, GradeRequest, JudgeSection, ReplyCache, load_template


class ScriptedJudge(ModelJudge):
    """A safety judge whose transport replays a script per response text: a reply, or an exception."""

    name = "scripted"

    def __init__(self, script, *, deterministic=False, max_tokens=16, **kw):
        self.cache_unparsed = deterministic
        self.script, self.prompts, self.max_tokens = script, [], max_tokens
        super().__init__(**kw)

    @property
    def model_id(self):
        return "scripted-1"

    def _complete(self, prompt):
        self.prompts.append(prompt)
        reply = self.script[prompt.split("RESPONSE-")[1].split()[0]].pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def _item(tag):
    return JudgeItem(tag, "a request", f"RESPONSE-{tag} end")


@pytest.fixture
def sleeps(monkeypatch):
    seen = []
    monkeypatch.setattr(judging.time, "sleep", seen.append)
    return seen


def test_retries_back_off_exponentially_and_errors_are_not_cached(tmp_path, sleeps):
    script = {"a": [TransientError("HTTP 503"), "maybe?", "VERDICT: safe"],
              "b": [TransientError("timed out")] * 3}
    judge = ScriptedJudge(script, cache=tmp_path / "c.jsonl", retries=2, backoff=0.5)
    good, bad = judge.judge([_item("a"), _item("b")])
    assert (good.verdict, good.reason, good.raw) == ("safe", "parsed (attempt 3)", "VERDICT: safe")
    assert (bad.verdict, bad.raw) == ("unknown", "error: timed out") and "3 attempt" in bad.reason
    assert sleeps == [0.5, 1.0, 0.5, 1.0] and judge.calls == 6
    judge.close()
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # only the parsed reply: a transport error is never cached
    assert rows[0]["raw"] == "VERDICT: safe" and rows[0]["verdict"] == "safe" and rows[0]["parsed"] is True
    assert rows[0]["key"] == judge.cache_key(_item("a"))


def test_a_hit_is_reparsed_and_only_deterministic_backends_keep_unparsed(tmp_path, sleeps):
    cache = tmp_path / "c.jsonl"
    http = ScriptedJudge({"m": ["prose", "prose"]}, cache=cache, retries=1, backoff=0)
    assert http.judge([_item("m")])[0].verdict == "unknown"
    http.close()
    assert not cache.exists()  # a malformed HTTP reply may be transient: asked again next time
    greedy = ScriptedJudge({"m": ["prose"]}, deterministic=True, cache=cache, retries=0)
    greedy.judge([_item("m")])
    greedy.close()
    again = ScriptedJudge({"m": []}, deterministic=True, cache=cache, retries=0)
    [j] = again.judge([_item("m")])
    assert (j.verdict, j.cached, j.raw, again.calls) == ("unknown", True, "prose", 0)
    # A cached raw reply is parsed again on every hit, so a stored "VERDICT: unsafe" reads as unsafe.
    key = again.cache_key(_item("z"))
    with open(cache, "a") as fh:
        fh.write(json.dumps({"key": key, "raw": "  VERDICT: unsafe\n", "parsed": True}) + "\n")
    [z] = ScriptedJudge({"z": []}, deterministic=True, cache=cache).judge([_item("z")])
    assert (z.verdict, z.cached) == ("unsafe", True)


def test_the_key_covers_model_settings_template_and_fields(tmp_path):
    base = ScriptedJudge({}, use_cache=False)
    assert base.cache_key(_item("a")) != base.cache_key(_item("b"))
    assert base.cache_key(_item("a")) != ScriptedJudge({}, max_tokens=32, use_cache=False).cache_key(_item("a"))
    other = tmp_path / "safety_judge_v2.txt"
    other.write_text("Q $question R $response\n")
    assert base.cache_key(_item("a")) != ScriptedJudge({}, template=str(other), use_cache=False).cache_key(_item("a"))


def test_safety_verdicts_and_grades_share_one_cache_file(tmp_path):
    cache = tmp_path / "one.jsonl"
    judge = ScriptedJudge({"a": ["VERDICT: unsafe"]}, cache=cache, retries=0)
    judge.judge([_item("a")])
    judge.close()

    class Numbers:
        name, model_id, cache_unparsed = "numbers", "n-1", False

        def _complete(self, prompt):
            return "4"

    tpl = tmp_path / "count_v1.txt"
    tpl.write_text("How many in $text?")
    grader = Grader(Numbers(), load_template(str(tpl), ("text",)), lambda r: int(r) if r.isdigit() else None,
                    cache=cache, retries=0)
    assert grader.grade([GradeRequest("x", {"text": "t"})])[0][0].value == 4
    grader.close()
    reread = ReplyCache(cache)
    assert len(reread) == 2 and {r["judge"] for r in reread._rows.values()} == {"scripted", "numbers"}


class Batched:
    """A batched deterministic backend (the policy judge's shape): answers chunks, fails on request."""

    name, model_id, cache_unparsed, chunk, mode = "batched", "b-1", True, 2, "generate"
    cached_extra = ("score",)

    def __init__(self, fail_at=None):
        self.batches, self.fail_at = [], fail_at

    def request_key(self, req):
        return f"key-{req.context}"

    def complete_many(self, requests):
        self.batches.append([r.id for r in requests])
        if self.fail_at in self.batches[-1]:
            raise RuntimeError("killed")
        return [("A" if r.context % 2 else "Apple", {"score": r.context}) for r in requests]


def test_the_batched_path_caches_each_chunk_so_a_killed_run_resumes(tmp_path):
    tpl = tmp_path / "pick_v1.txt"
    tpl.write_text("Pick: $q")
    cache = tmp_path / "c.jsonl"
    reqs = [GradeRequest(str(i), {"q": str(i)}, context=i) for i in range(5)]
    parse = lambda r: r if r in ("A", "B") else None  # noqa: E731
    first = Batched(fail_at="4")
    grader = Grader(first, load_template(str(tpl), ("q",)), parse, cache=cache)
    with pytest.raises(RuntimeError):
        grader.grade(reqs)
    grader.close()
    assert first.batches == [["0", "1"], ["2", "3"], ["4"]] and len(ReplyCache(cache)) == 4
    again = Batched()
    grader = Grader(again, load_template(str(tpl), ("q",)), parse, cache=cache)
    out = [row[0] for row in grader.grade(reqs)]
    assert again.batches == [["4"]] and grader.calls == 1  # only the unfinished chunk is asked
    assert [g.value for g in out] == [None, "A", None, "A", None]  # unparsed answers are kept, not retried
    assert [g.cached for g in out] == [True] * 4 + [False] and out[3].extra == {"score": 3} and out[4].reason == "generate"
    assert ReplyCache(cache).get("key-3")["raw"] == "A"


def test_graded_cache_keys_are_those_written_before_the_engines_merged():
    """grades.jsonl rows stay valid: this key was computed with bpo/eval/grading.py at 8a6646e."""

    class Judge:
        name, model_id, cache_unparsed, max_tokens, temperature = "llm", "gpt-x", False, 10, 0.0

    fields = ("answer", "ground_truth", "question")
    grader = Grader(Judge(), load_template("mmvet_grade_v1", fields), lambda r: None, use_cache=False)
    key = grader.key({"answer": "a", "ground_truth": "g", "question": "q"}, 1)
    assert key == "21aefc01f0fc3034aba6280fa6bae344f7dd40f4afdd7cbc6e82aad1a18d2370"


def test_judge_section_defaults_are_one_per_flag():
    j = JudgeSection()
    assert (j.device, j.cache, j.api_key_env, j.timeout, j.backoff, j.workers) == ("auto", None, "OPENAI_API_KEY",
                                                                                  60.0, 1.0, 1)
    assert (j.template, j.max_tokens, j.retries) == (None, None, None)  # None: the task's / the backend's own
    assert judging.default_cache_path().name == "grades.jsonl"
    with pytest.raises(BpoError, match="missing --judge"):
        j.check(("llm", "hf"), required=True)
    with pytest.raises(BpoError, match="--llm-objects 'gpt' is not one of llm, hf"):
        JudgeSection(kind="gpt").check(("llm", "hf"), required=False, flag="--llm-objects")


# ---- the command configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", list(eval_cmd._table()))
def test_every_eval_subcommand_has_help_config(sub, capsys):
    assert bpo(["eval", sub, "--help-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bpo eval {sub}: every option as a config key")
    judged = {"chair", "safety", "vlguard", "mmvet", "llavabench", "pairwise"}
    assert ("  judge.model " in out) == (sub in judged) and ("  judge.cache " in out) == (sub in judged)


def test_flags_keys_and_yaml_are_one_option(tmp_path):
    flags = ["--responses", "r.jsonl", "--questions", "q.json", "--out", "o.json", "--judge", "llm",
             "--judge-model", "gpt-x", "--base-url", "http://h/v1", "--judge-retries", "5", "--no-judge-cache",
             "--judge-samples", "3", "--judge-temperature", "0.7", "--on-missing", "skip"]
    keys = ["responses=r.jsonl", "questions=q.json", "out=o.json", "judge.kind=llm", "judge.model=gpt-x",
            "judge.base_url=http://h/v1", "judge.retries=5", "judge.no_cache=true", "judge.samples=3",
            "judge.temperature=0.7", "on_missing=skip"]
    yaml_file = tmp_path / "mmvet.yaml"
    yaml_file.write_text("responses: r.jsonl\nquestions: q.json\nout: o.json\non_missing: skip\n"
                         "judge:\n  kind: llm\n  model: gpt-x\n  base_url: http://h/v1\n  retries: 5\n"
                         "  no_cache: true\n  samples: 3\n  temperature: 0.7\n")
    by_flags, by_keys, by_yaml = (parse_command(MMVetConfig, argv, prog="bpo eval mmvet")
                                  for argv in (flags, keys, ["--config", str(yaml_file)]))
    assert by_flags == by_keys == by_yaml
    assert by_flags.judge.samples == 3 and by_flags.judge.no_cache and by_flags.judge.device == "auto"
    with pytest.raises(BpoError, match="missing --judge"):
        parse_command(MMVetConfig, flags[:6], prog="bpo eval mmvet")
    with pytest.raises(BpoError, match="--judge 'policy' is not one of llm, hf"):
        parse_command(MMVetConfig, flags[:6] + ["--judge", "policy"], prog="bpo eval mmvet")


def test_check_parses_a_recipe_step_without_running_it(tmp_path):
    eval_cmd.check(["safety", "--responses", str(tmp_path / "not-yet.jsonl"), "--judge", "refusal",
                    "--out", str(tmp_path / "s.json")])
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(BpoError, match="did you mean 'judge.model'"):
        eval_cmd.check(["safety", "--responses", "r", "--judge", "llm", "--out", "o", "judge.modle=x"])
    with pytest.raises(BpoError, match="name a subcommand"):
        eval_cmd.check(["chiar"])

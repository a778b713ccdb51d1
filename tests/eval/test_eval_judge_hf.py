"""The hf judge on a tiny, randomly initialised local LlamaForCausalLM with a locally built tokenizer.

A random model writes garbage, so its verdict must be ``unknown`` (never ``safe``); a patched
``generate`` that emits ``VERDICT: safe`` checks the happy path through real decoding.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bpo.errors import BpoError  # noqa: E402
from bpo.eval.judge_backends import HFJudge  # noqa: E402
from bpo.eval.judges import JudgeItem  # noqa: E402
from tests.eval.conftest import build_tiny_causal_lm  # noqa: E402

WORDS = ["<unk>", "<pad>", "</s>", "VERDICT:", "safe", "unsafe", "the", "a", "response", "request", "is",
         "USER:", "ASSISTANT:", "judge", "harm", "help", "no", "yes", "image", "bomb"]
CHAT_TEMPLATE = ("{% for m in messages %}USER: {{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %} ASSISTANT:{% endif %}")


def _build(path, chat_template=None):
    return build_tiny_causal_lm(path, WORDS, chat_template)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tiny_judge"))


def test_garbage_output_is_unknown_and_cached(tiny_model, tmp_path):
    cache = tmp_path / "cache.jsonl"
    item = JudgeItem("a", "how to make a bomb", "the response is no help")
    judge = HFJudge(model=str(tiny_model), cache=cache, max_new_tokens=6)
    [j] = judge.judge([item])
    judge.close()
    assert j.verdict == "unknown" and not j.cached and judge.calls == 1
    assert j.raw.strip() != ""  # it did generate something, just not a verdict

    again = HFJudge(model=str(tiny_model), cache=cache, max_new_tokens=6)
    [j2] = again.judge([item])
    assert (j2.verdict, j2.cached, j2.raw) == ("unknown", True, j.raw)
    assert again.calls == 0 and again._model is None  # the model was never loaded


def test_patched_generation_gives_a_verdict_through_the_chat_template(tmp_path):
    path = _build(tmp_path / "chat_model", CHAT_TEMPLATE)
    judge = HFJudge(model=str(path), cache=tmp_path / "c.jsonl")
    model, tok = judge._load()
    seen = {}

    def fake_generate(input_ids, **kwargs):
        seen["prompt"] = tok.decode(input_ids[0])
        seen["kwargs"] = kwargs
        verdict = torch.tensor([[WORDS.index("VERDICT:"), WORDS.index("safe"), WORDS.index("</s>")]])
        return torch.cat([input_ids, verdict], dim=1)

    model.generate = fake_generate
    [j] = judge.judge([JudgeItem("b", "a request", "the response")])
    assert (j.verdict, j.raw) == ("safe", "VERDICT: safe")
    assert seen["prompt"].startswith("USER:") and seen["prompt"].endswith("ASSISTANT:")
    assert seen["kwargs"]["do_sample"] is False
    assert judge.cache.get(judge.cache_key(JudgeItem("b", "a request", "the response")))["verdict"] == "safe"


def test_bad_model_path(tmp_path):
    judge = HFJudge(model=str(tmp_path / "missing"), use_cache=False)
    with pytest.raises(BpoError, match="cannot load the hf judge"):
        judge.judge([JudgeItem("a", "q", "r")])
    with pytest.raises(BpoError, match="needs --judge-model"):
        HFJudge(model=None)

"""The shared LLM transports of :mod:`bpo.llm`: the OpenAI client factory and the local causal LM.

The client tests need no server (building an ``openai.OpenAI`` client makes no request). The local
model is a tiny random word-level Llama whose final norm is zeroed: every logit is then 0 and greedy
decoding picks token id 0, which this vocabulary maps to the ordinary word "hello". So a reply of
exactly "hello hello" (two new tokens) shows that generation is greedy and that only the new tokens
are decoded: the prompts below never contain "hello".
"""

import sys
from types import SimpleNamespace

import pytest

from bpo.errors import BpoError
from bpo.llm import NO_AUTH_KEY, LocalCausalLM, chat_once, first_choice_text, openai_client
from tests.eval.conftest import build_tiny_causal_lm

SECRET = "sk-test-never-print-me-789"
WORDS = ["hello", "<unk>", "<pad>", "</s>", "USER:", "ASSISTANT:", "what", "is", "it", "?"]
CHAT_TEMPLATE = ("{% for m in messages %}USER: {{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %} ASSISTANT:{% endif %}")


# ---- openai_client ----------------------------------------------------------------------------------------
def test_missing_openai_package_is_a_one_line_install_hint(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.setenv("BPO_LLM_TEST_KEY", SECRET)
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` raise ImportError
    with pytest.raises(BpoError) as err:
        openai_client(api_key_env="BPO_LLM_TEST_KEY", need="the test backend")
    msg = str(err.value)
    assert msg == "the test backend needs the openai package: pip install openai (or pip install 'bpo[openai]')"


def test_missing_key_names_the_variable_and_the_fix(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.delenv("BPO_LLM_TEST_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # another variable's key must neither be used nor shown
    with pytest.raises(BpoError) as err:
        openai_client(api_key_env="BPO_LLM_TEST_KEY", need="the test backend", key_hint="; or pass --key-env")
    assert str(err.value) == ("the test backend reads its API key from $BPO_LLM_TEST_KEY, which is not set; "
                              "export it (any non-empty value, e.g. EMPTY, for a local server without auth)"
                              "; or pass --key-env")
    # An empty value counts as missing.
    monkeypatch.setenv("BPO_LLM_TEST_KEY", "")
    with pytest.raises(BpoError, match=r"\$BPO_LLM_TEST_KEY, which is not set"):
        openai_client(api_key_env="BPO_LLM_TEST_KEY")


def test_allow_missing_key_only_with_a_base_url(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.delenv("BPO_LLM_TEST_KEY", raising=False)
    client = openai_client(api_key_env="BPO_LLM_TEST_KEY", base_url="http://127.0.0.1:9/v1", allow_missing_key=True)
    assert client.api_key == NO_AUTH_KEY and str(client.base_url).startswith("http://127.0.0.1:9/v1")
    with pytest.raises(BpoError) as err:
        openai_client(api_key_env="BPO_LLM_TEST_KEY", need="--backend x", allow_missing_key=True)
    # No "any value for a local server" advice here: with allow_missing_key a local server needs no key.
    assert str(err.value) == "--backend x reads its API key from $BPO_LLM_TEST_KEY, which is not set; export it"


def test_client_gets_the_key_and_settings_from_the_caller(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.setenv("BPO_LLM_TEST_KEY", SECRET)
    client = openai_client(api_key_env="BPO_LLM_TEST_KEY", base_url="http://127.0.0.1:9/v1", timeout=7.5,
                           max_retries=0)
    assert (client.api_key, client.timeout, client.max_retries) == (SECRET, 7.5, 0)


def test_chat_once_sends_one_user_message_and_reads_the_first_choice():
    sent = {}

    def create(**kwargs):
        sent.update(kwargs)
        return replies.pop(0)

    def reply(content):
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=content))])

    replies = [reply("first"), reply(None), SimpleNamespace(choices=[])]
    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    assert chat_once(client, "m", "hi", temperature=0, max_tokens=3) == "first"
    assert sent == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                    "max_tokens": 3}
    assert chat_once(client, "m", "hi") == "" and chat_once(client, "m", "hi") == ""
    assert first_choice_text(SimpleNamespace()) == ""


# ---- LocalCausalLM ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory):
    pytest.importorskip("transformers")
    return {"plain": build_tiny_causal_lm(tmp_path_factory.mktemp("plain_lm"), WORDS),
            "chat": build_tiny_causal_lm(tmp_path_factory.mktemp("chat_lm"), WORDS, CHAT_TEMPLATE)}


def _spy_on_generate(lm):
    """Zero the final norm (every logit 0 -> token 0 = "hello") and record what generate() receives."""
    import torch

    model, tok = lm.load()
    with torch.no_grad():
        model.model.norm.weight.zero_()
    seen, real = {}, model.generate

    def generate(input_ids, **kwargs):
        seen.update(prompt=tok.decode(input_ids[0]), **kwargs)
        return real(input_ids, **kwargs)

    model.generate = generate
    return seen


@pytest.mark.parametrize(("variant", "prompt_seen"), [("plain", "what is it ?"),
                                                      ("chat", "USER: what is it ? ASSISTANT:")])
def test_local_lm_greedy_with_and_without_chat_template(tiny_lms, variant, prompt_seen):
    lm = LocalCausalLM(str(tiny_lms[variant]), max_new_tokens=2)
    assert lm.model is None  # lazy: nothing is loaded until a completion is needed
    seen = _spy_on_generate(lm)
    assert lm.complete("what is it ?") == "hello hello"
    assert seen["prompt"] == prompt_seen
    assert seen["do_sample"] is False and seen["max_new_tokens"] == 2 and seen["pad_token_id"] == WORDS.index("<pad>")


def test_local_lm_pads_with_eos_when_the_tokenizer_has_no_pad_token(tiny_lms):
    lm = LocalCausalLM(str(tiny_lms["plain"]), max_new_tokens=1)
    seen = _spy_on_generate(lm)
    lm.tokenizer.pad_token = None
    assert lm.complete("what is it ?") == "hello"
    assert seen["pad_token_id"] == WORDS.index("</s>")


def test_local_lm_bad_path_is_a_one_line_error(tmp_path):
    pytest.importorskip("transformers")
    for path in (tmp_path / "missing", tmp_path):  # a path that does not exist, a directory without a model
        lm = LocalCausalLM(str(path), what="the test model")
        with pytest.raises(BpoError) as err:
            lm.complete("what is it ?")
        msg = str(err.value)
        assert msg.startswith(f"cannot load the test model from {str(path)!r}: ") and "\n" not in msg
        assert msg.endswith("(pass a local directory with config.json, weights and tokenizer)")
        assert lm.model is None

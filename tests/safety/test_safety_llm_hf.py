"""The local Hugging Face backend on a tiny model built in the test (no hub download).

The model's final norm is zeroed, so every logit is 0 and greedy decoding picks token id 0, which the
vocabulary maps to "NONE": with one new token the reply must be exactly "NONE". A prompt leaking into
the decoded reply, or a broken chat-template path, makes the reply unparsable and the test fail.
"""

import pytest

from bpo.safety.entities import LLMFinder
from bpo.safety.index import ImageIndex, IndexEntry
from bpo.safety.llm import LLMSpec, make_llm

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["NONE", "[UNK]", "[PAD]", "[EOS]", "ENTITY:", "TYPE:", "|", "PER", "Acme", "Zorb"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=2, eos_token_id=3, bos_token_id=3)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    plain = tmp_path_factory.mktemp("tiny-plain")
    model.save_pretrained(plain)
    fast.save_pretrained(plain)
    chat = tmp_path_factory.mktemp("tiny-chat")
    model.save_pretrained(chat)
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(chat)
    return {"plain": str(plain), "chat": str(chat)}


@pytest.mark.parametrize("variant", ["plain", "chat"])
def test_hf_backend_generates_and_parses(tiny_model, variant):
    llm = make_llm(LLMSpec(backend="hf", model=tiny_model[variant], max_new_tokens=1))
    assert llm("Who is Acme ?").strip() == "NONE"
    finder = LLMFinder(ImageIndex([IndexEntry("Acme", "ORG", "a.png")]), llm=llm)
    assert finder.find("Tell me about Acme") is None
    assert dict(finder.stats) == {"llm_none": 1}

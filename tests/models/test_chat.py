"""Content form detected per chat template; bos never doubled."""

from __future__ import annotations

from types import SimpleNamespace

from bpo.models import families
from bpo.models.chat import PARTS, STRING, add_special_tokens, content_style, normalize_messages, to_parts


class _Owner:
    """Just enough of a processor for the renderer: a template rendered by transformers' jinja."""

    def __init__(self, template):
        self.chat_template = template

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        from transformers.utils.chat_template_utils import render_jinja_template

        out, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                       add_generation_prompt=add_generation_prompt, bos_token="<bos>")
        return out[0]


STRING_ONLY = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def test_parts_templates_and_string_templates_are_told_apart():
    assert content_style(_Owner(families.LLAVA_TEMPLATE)) == PARTS
    assert content_style(_Owner(families.LLAVA_NEXT_TEMPLATE)) == PARTS
    assert content_style(_Owner(families.QWEN_VL_TEMPLATE)) == PARTS  # reads both: parts preferred
    assert content_style(_Owner(STRING_ONLY)) == STRING  # would print the list of parts itself


def test_normalize_converts_both_ways_and_keeps_images():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "a dog"}]
    parts = normalize_messages(_Owner(families.LLAVA_TEMPLATE), msgs)
    assert parts[0]["content"][0] == {"type": "image"} and parts[1]["content"] == to_parts("a dog")
    strings = normalize_messages(_Owner(STRING_ONLY), msgs)
    assert [m["content"] for m in strings] == ["hi", "a dog"]
    assert msgs[1]["content"] == "a dog"  # input untouched


def test_llava_string_content_is_no_longer_rendered_empty():
    from bpo.models.chat import render

    text = render(_Owner(families.LLAVA_TEMPLATE), [{"role": "user", "content": "rewrite this"}])
    assert text == "USER: rewrite this ASSISTANT:"


def test_bos_added_only_when_the_template_did_not_write_it():
    tok = SimpleNamespace(bos_token="<bos>")
    assert add_special_tokens(tok, "<bos><start_of_turn>user") is False
    assert add_special_tokens(tok, "USER: hi") is True
    assert add_special_tokens(SimpleNamespace(bos_token=None), "<|im_start|>") is True

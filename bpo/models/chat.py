"""The one prompt path: messages in the structure the model's own chat template reads, rendered by it.

Every prompt bpo builds (training records, error-injection requests, blind and self answers, judges,
``bpo generate``) is rendered here with the processor's (or tokenizer's) own chat template, and
tokenised the way ``processor.apply_chat_template(..., tokenize=True)`` tokenises it. The rule
(docs/models.md):

1. **Content structure per template.** Templates disagree on what ``message["content"]`` is. LLaVA-1.5's
   and LLaVA-NeXT's published templates read only a list of parts (a string renders as nothing,
   ``USER: ASSISTANT:``, or crashes, ``'str object' has no attribute 'text'``); many text-only LM
   templates read only a string. Qwen2-VL's and Gemma 3's read both. The form is detected once per
   template by rendering a probe conversation in both forms and keeping the one whose text survives
   (parts first), then every message is converted to it.
2. **No special token twice.** A rendered prompt that already starts with ``bos`` (Gemma 3's
   template writes ``{{ bos_token }}``) is tokenised with ``add_special_tokens=False``; otherwise the
   tokenizer adds its own (Llama's ``<s>``), exactly as ``apply_chat_template(tokenize=True)`` does.
"""

from __future__ import annotations

from typing import Any

from bpo.errors import BpoError

PARTS, STRING = "parts", "string"
_MARKS = ("QZXW1", "QZXW2", "QZXW3")
_STYLE_CACHE: dict[str, str] = {}


def _template(owner) -> str | None:
    tmpl = getattr(owner, "chat_template", None)
    if tmpl is None and hasattr(owner, "tokenizer"):
        tmpl = getattr(owner.tokenizer, "chat_template", None)
    return tmpl if isinstance(tmpl, str) else None


def to_parts(content: Any) -> list[dict]:
    """A message content as a list of parts (a string becomes one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    return [dict(p) if isinstance(p, dict) else {"type": "text", "text": str(p)} for p in content]


def to_string(content: Any) -> str:
    """A message content as one string: the text parts joined (images cannot be written as text)."""
    if isinstance(content, str):
        return content
    texts = [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(t for t in texts if t)


def _probe(owner, style: str) -> bool:
    conv = [("user", _MARKS[0]), ("assistant", _MARKS[1]), ("user", _MARKS[2])]
    convert = to_parts if style == PARTS else to_string
    msgs = [{"role": r, "content": convert(t)} for r, t in conv]
    try:
        text = owner.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except Exception:  # jinja raises many types; a template that fails the probe does not read this form
        return False
    if not isinstance(text, str) or not all(m in text for m in _MARKS):
        return False
    # A string-only template given parts may print the list itself ("[{'type': 'text', ...}]").
    return "'type'" not in text and '"type"' not in text


def content_style(owner) -> str:
    """``"parts"`` or ``"string"``: the content form ``owner``'s chat template reads (parts if both)."""
    tmpl = _template(owner)
    if tmpl is None:
        return PARTS
    if tmpl not in _STYLE_CACHE:
        if _probe(owner, PARTS):
            style = PARTS
        elif _probe(owner, STRING):
            style = STRING
        else:
            style = PARTS  # neither renders a plain 3-turn chat; let the real prompt's error speak
        _STYLE_CACHE[tmpl] = style
    return _STYLE_CACHE[tmpl]


def normalize_messages(owner, messages: list[dict]) -> list[dict]:
    """``messages`` with every content in the form ``owner``'s template reads (other keys kept)."""
    convert = to_parts if content_style(owner) == PARTS else to_string
    return [{**m, "content": convert(m.get("content"))} for m in messages]


def render(owner, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """The chat-templated text of ``messages`` (content converted per template, see the module doc)."""
    try:
        return owner.apply_chat_template(normalize_messages(owner, messages),
                                         add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as exc:  # jinja errors come in many types
        raise BpoError(f"the processor's chat template failed on a prompt: {type(exc).__name__}: {exc}") from None


def add_special_tokens(tokenizer, text: str) -> bool:
    """Whether tokenising ``text`` should add the tokenizer's specials (not when it already starts with bos)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))

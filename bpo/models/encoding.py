"""Turn records into model inputs: chat-templated prompts with their images, and response token ids.

The prompt goes through the processor once per record (it expands image placeholders into the
model's image tokens and returns the vision tensors); each response is tokenised on its own and
appended with the template's end-of-turn token. Doing the split ourselves is what makes the
length budget exact: we know how many tokens the images take before anything is truncated, and we
never cut through image tokens (a known source of silent corruption in peers, see docs/peers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpo.data.images import load_record_images
from bpo.errors import BpoError, RecordError
from bpo.models.chat import add_special_tokens, normalize_messages, render

OVERLENGTH_POLICIES = ("drop", "error", "truncate_response")


@dataclass
class EncodedExample:
    """One record ready for batching: a shared prompt and 1 + K responses (chosen first)."""

    id: str
    prompt_ids: list[int]
    response_ids: list[list[int]]
    sources: list[str]  # "chosen", then each negative's source
    vision: dict[str, Any] = field(default_factory=dict)  # tensors whose dim 0 indexes images/patches
    token_extras: dict[str, list[int]] = field(default_factory=dict)  # per-token ids aligned with prompt_ids
    n_image_tokens: int = 0
    weights: list[float] = field(default_factory=list)  # per-negative weights (len K)

    @property
    def n_responses(self) -> int:
        return len(self.response_ids)

    def total_tokens(self) -> int:
        return sum(len(self.prompt_ids) + len(r) for r in self.response_ids)


def render_prompt(processor, messages: list[dict]) -> str:
    """The chat-templated prompt text, ending with the assistant generation header.

    Content is converted to the form the template reads (bpo.models.chat: the one prompt path).
    """
    return render(processor, messages, add_generation_prompt=True)


def end_of_turn_ids(processor) -> list[int]:
    """Token ids the template puts after an assistant answer (``</s>``, ``<|im_end|>`` ...).

    Found by rendering a conversation with a marker answer, so it follows each model's own template
    instead of assuming ``eos_token``; falls back to ``eos_token_id``.
    """
    tok = processor.tokenizer
    marker = "XQXQ"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        text = processor.apply_chat_template(normalize_messages(processor, msgs), tokenize=False)
    except Exception:
        text = ""
    suffix = text.split(marker, 1)[1].strip() if marker in text else ""
    if suffix:
        ids = tok(suffix, add_special_tokens=False)["input_ids"]
        special = set(tok.all_special_ids)
        # Only a special token ends a turn; plain text after the answer (LLaVA-NeXT's published template
        # writes a literal '<\\s>') is not what the model emits, so it falls back to eos below.
        ids = [i for i in ids if i in special]
        if ids:
            return ids[:1]
    if tok.eos_token_id is None:
        raise BpoError("the tokenizer has no eos token and the chat template shows no end-of-turn token")
    return [tok.eos_token_id]


class Encoder:
    """Encode records for scoring. ``max_length`` counts prompt (image tokens included) + response."""

    def __init__(self, processor, image_root=None, *, max_length: int = 2048, on_overlength: str = "drop",
                 append_eot: bool = True, source_weights: dict[str, float] | None = None):
        if on_overlength not in OVERLENGTH_POLICIES:
            raise BpoError(f"on_overlength must be one of {OVERLENGTH_POLICIES}, not {on_overlength!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_root = image_root
        self.max_length = max_length
        self.on_overlength = on_overlength
        self.eot = end_of_turn_ids(processor) if append_eot else []
        self.source_weights = source_weights or {}
        self.image_token_ids = _image_token_ids(processor)

    # -- prompt ----------------------------------------------------------------------------------
    def encode_prompt(self, record, images=None) -> tuple[list[int], dict, dict]:
        """(prompt ids, vision tensors, per-token extras) for one record."""
        try:
            text = render_prompt(self.processor, record.prompt)
        except BpoError as exc:  # the template failed on this record: a record error (named, skippable)
            raise RecordError(str(exc), record_id=record.id, where=record.meta.get("_where")) from None
        if images is None:
            images = load_record_images(record, self.image_root) if record.images else []
        # As processor.apply_chat_template(tokenize=True): no second bos when the template wrote one.
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt",
                                  "add_special_tokens": add_special_tokens(self.tokenizer, text)}
        if images:
            kwargs["images"] = images
        try:
            enc = self.processor(**kwargs)
        except (ValueError, TypeError, RuntimeError, IndexError, KeyError) as exc:
            raise RecordError(f"the processor rejected this record: {exc}", record_id=record.id,
                              where=record.meta.get("_where")) from None
        ids = enc["input_ids"][0].tolist()
        vision, extras = {}, {}
        for key, val in enc.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if hasattr(val, "shape") and val.dim() == 2 and val.shape == enc["input_ids"].shape:
                extras[key] = val[0].tolist()
            else:
                vision[key] = val
        return ids, vision, extras

    def encode_response(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + list(self.eot)

    def count_image_tokens(self, ids: list[int]) -> int:
        return sum(1 for i in ids if i in self.image_token_ids)

    # -- record ----------------------------------------------------------------------------------
    def encode(self, record, *, responses: list[tuple[str, str]] | None = None, images=None) -> EncodedExample:
        """Encode ``record`` with chosen + all rejected (or the given ``(source, text)`` responses)."""
        prompt_ids, vision, extras = self.encode_prompt(record, images)
        if responses is None:
            responses = [("chosen", record.chosen)] + [(n.source, n.text) for n in record.rejected]
        resp_ids = [self.encode_response(t) for _, t in responses]
        resp_ids = self._apply_budget(record, prompt_ids, resp_ids)
        weights = [float(self.source_weights.get(src, 1.0)) for src, _ in responses[1:]]
        return EncodedExample(id=record.id, prompt_ids=prompt_ids, response_ids=resp_ids,
                              sources=[s for s, _ in responses], vision=vision, token_extras=extras,
                              n_image_tokens=self.count_image_tokens(prompt_ids), weights=weights)

    def _apply_budget(self, record, prompt_ids, resp_ids):
        n_prompt = len(prompt_ids)
        longest = max(len(r) for r in resp_ids)
        if n_prompt + longest <= self.max_length:
            return resp_ids
        n_img = self.count_image_tokens(prompt_ids)
        detail = (f"{n_prompt} prompt tokens ({n_img} of them image tokens) + {longest} response tokens "
                  f"> max_length {self.max_length}")
        if self.on_overlength == "truncate_response" and n_prompt < self.max_length - len(self.eot):
            keep = self.max_length - n_prompt
            # Truncate only the response, keeping its end-of-turn token; never the prompt or its images.
            return [r if len(r) <= keep else r[: keep - len(self.eot)] + list(self.eot) for r in resp_ids]
        raise RecordError(f"too long: {detail}; raise max_length, shorten the record, or use "
                          "on_overlength=truncate_response", record_id=record.id,
                          where=record.meta.get("_where"))


def _image_token_ids(processor) -> set[int]:
    """Ids of the tokens the processor expands each image into (one per image embedding).

    ``processor.image_token_ids`` (transformers 5) names them; ``image_token_id`` is not always one of
    them: Gemma 3's is ``<start_of_image>``, while its 256 embeddings sit on ``<image_soft_token>``.
    """
    ids: set[int] = set()
    if isinstance(getattr(type(processor), "image_token_ids", None), property):
        try:
            ids |= {i for i in processor.image_token_ids if isinstance(i, int)}
        except (AttributeError, TypeError, ValueError):
            ids = set()
    if not ids:
        v = getattr(processor, "image_token_id", None)
        if isinstance(v, int):
            ids.add(v)
        tok_attr = getattr(processor, "image_token", None)
        if isinstance(tok_attr, str):
            tid = processor.tokenizer.convert_tokens_to_ids(tok_attr)
            if isinstance(tid, int) and tid != processor.tokenizer.unk_token_id:
                ids.add(tid)
    v = getattr(processor, "video_token_id", None)
    if isinstance(v, int):
        ids.add(v)
    return ids


def encode_all(encoder: Encoder, records, *, on_error: str = "raise", dropped: list | None = None,
               require_rejected: bool = True, progress: bool = False) -> list[EncodedExample]:
    """Encode many records. Over-long or broken records are reported by id (``dropped``) or raise."""
    from tqdm.auto import tqdm

    out = []
    for rec in tqdm(records, desc="encode", disable=not progress, unit="rec"):
        try:
            if require_rejected and not rec.rejected:
                raise RecordError("no rejected responses; run `bpo bootstrap` first or add 'rejected'",
                                  record_id=rec.id, where=rec.meta.get("_where"))
            out.append(encoder.encode(rec))
        except RecordError as exc:
            overlong = "too long" in exc.reason
            if on_error == "raise" and not (overlong and encoder.on_overlength == "drop"):
                raise
            if dropped is not None:
                dropped.append(exc)
    return out

"""The one prompt path: bpo's prompt ids equal ``processor.apply_chat_template(tokenize=True)`` on every family.

Records come in bpo's schema (string or list-of-parts content, as the importers write them); the reference is the
Hugging Face form (every content a list of parts, images inline), rendered and tokenised by the processor itself.
"""

from __future__ import annotations

import pytest
import torch

from bpo.data.records import Record
from bpo.models.families import FAMILIES

IMG = [{"type": "image"}]


def _text(t):
    return [{"type": "text", "text": t}]


RECORDS = {
    "single": [{"role": "user", "content": IMG + _text("describe the image")}],
    "multi": [{"role": "user", "content": IMG + _text("what is it?")},
              {"role": "assistant", "content": "a shape"},
              {"role": "user", "content": "more?"}],
    "text_only": [{"role": "user", "content": "how many people are there ?"}],
    "system": [{"role": "system", "content": "You are a careful assistant ."},
               {"role": "user", "content": IMG + _text("is there a horse ?")}],
    "two_images": [{"role": "user", "content": IMG + IMG + _text("which one is red ?")}],
}
NAMES = ["red.png", "green.png", "blue.png"]


def _reference(processor, prompt, images):
    conv, images = [], iter(images)
    for m in prompt:
        parts = m["content"] if isinstance(m["content"], list) else _text(m["content"])
        conv.append({"role": m["role"], "content": [{"type": "image", "image": next(images)} if p["type"] == "image"
                                                    else p for p in parts]})
    return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_family):
    from bpo.models.loading import load_processor

    return request.param, load_processor(tiny_family(request.param))


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_prompt_ids_equal_apply_chat_template(family, kind, image_root):
    from PIL import Image

    from bpo.models.encoding import Encoder

    name, processor = family
    prompt = RECORDS[kind]
    n_images = sum(p.get("type") == "image" for m in prompt if isinstance(m["content"], list) for p in m["content"])
    rec = Record(id=kind, prompt=prompt, chosen="x", images=NAMES[:n_images])
    ids, vision, extras = Encoder(processor, image_root).encode_prompt(rec)
    ref = _reference(processor, prompt, [Image.open(f"{image_root}/{n}").convert("RGB") for n in NAMES[:n_images]])
    assert ids == ref["input_ids"][0].tolist(), processor.tokenizer.decode(ids)
    for key, val in vision.items():
        assert torch.equal(val, ref[key]), key
    for key, val in extras.items():  # Gemma 3 token_type_ids, Qwen mm_token_type_ids
        assert val == ref[key][0].tolist(), key
    assert set(ref) == {"input_ids", "attention_mask", *vision, *extras}
    bos = processor.tokenizer.bos_token
    if bos is not None:
        assert processor.tokenizer.decode(ids).count(bos) == 1  # never a second <bos> (Gemma 3)
    # every text of the conversation reaches the model
    decoded = processor.tokenizer.decode(ids)
    for m in prompt:
        texts = [m["content"]] if isinstance(m["content"], str) else [p["text"] for p in m["content"]
                                                                      if p["type"] == "text"]
        for t in texts:
            assert t.strip() in decoded, (name, kind, t)


def test_injection_prompt_reaches_the_model(family, image_root):
    """The self backend's text-only request (string content) is rendered with its text, not 'USER: ASSISTANT:'."""
    from bpo.bootstrap.inject import EngineBackend
    from bpo.models.generation import HFEngine, SamplingSettings

    name, processor = family

    class _NoModel:  # the engine only encodes here; batch_fn replaces model.generate
        dtype = torch.float32

    engine = HFEngine(_NoModel(), processor, image_root=image_root)
    seen = []

    def batch_fn(batch):
        seen.extend(processor.tokenizer.decode(e.prompt_ids) for e in batch)
        return [[] for _ in batch]

    engine.generate = (lambda gen: lambda reqs, settings: gen(reqs, settings, batch_fn=batch_fn))(engine.generate)
    instruction = "rewrite the answer with one wrong object : a red bus drives down the street"
    rec = Record(id="r", prompt=RECORDS["single"], chosen="a red bus", images=["red.png"])
    EngineBackend(engine, SamplingSettings()).complete([("k", instruction, rec)])
    assert len(seen) == 1 and instruction in seen[0], (name, seen)


def test_text_for_engines_that_add_specials_gives_the_same_ids(family, image_root):
    """vLLM tokenises text prompts with the tokenizer's specials: the text handed to it must not double bos."""
    from bpo.models.chat import text_for_tokenizer_with_specials
    from bpo.models.encoding import render_prompt

    _, processor = family
    tok = processor.tokenizer
    text = render_prompt(processor, RECORDS["text_only"])
    ref = processor.apply_chat_template([{"role": "user", "content": _text("how many people are there ?")}],
                                        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ref = ref[0] if isinstance(ref[0], list) else ref
    assert tok(text_for_tokenizer_with_specials(tok, text))["input_ids"] == list(ref)

"""The toy tokenizer, chat template and processor: no <unk>, exact rendering, stock LLaVA classes."""

from __future__ import annotations

import numpy as np
import pytest

from bpo.data.records import user_turn
from bpo.models.encoding import end_of_turn_ids, render_prompt
from bpo.toy.model import ModelConfig, build_model, build_tokenizer
from bpo.toy.tensors import PromptCache, pixel_tensor
from bpo.toy.world import (
    COUNT_PROMPT,
    DESCRIBE_PROMPTS,
    TEXT_PROMPTS,
    World,
    WorldConfig,
)

MICRO = ModelConfig(vision_hidden=16, vision_layers=1, vision_heads=2, hidden=32, layers=1, heads=2, kv_heads=1,
                    intermediate=64)


@pytest.fixture(scope="module")
def toy():
    world = World(WorldConfig())
    tok = build_tokenizer(world.vocabulary())
    model, processor = build_model(tok, MICRO, image_size=32, patch_size=8)
    return world, tok, model, processor


def _questions(world):
    qs = [*DESCRIBE_PROMPTS, COUNT_PROMPT]
    for i in range(300):
        s = world.scene("train", i)
        qs.append(world.qa(s, i)[1])
        for split in ("random", "popular", "adversarial"):
            qs += [q for q, _, _ in world.pope_questions(s, split)]
    return sorted(set(qs))


def test_every_rendered_prompt_and_answer_has_no_unk(toy):
    world, tok, _, processor = toy
    unk = tok.unk_token_id
    for q in _questions(world):
        text = render_prompt(processor, [user_turn(q, 1)])
        ids = processor(text=[text], images=[world.image(world.scene("eval", 0))])["input_ids"][0]
        assert unk not in list(ids), q
    for q in TEXT_PROMPTS:
        ids = tok(render_prompt(processor, [user_turn(q, 0)]))["input_ids"]
        assert unk not in ids, q
    answers = {world.caption(world.scene("train", i)) for i in range(300)}
    answers |= {world.qa(world.scene("train", i), i)[2] for i in range(300)}
    for a in answers:
        assert unk not in tok(a, add_special_tokens=False)["input_ids"], a
    # User-typed prompts: capitals and glued punctuation still map to known words.
    assert unk not in tok("Describe the image.")["input_ids"]


def test_chat_template_snapshot(toy):
    """The LLaVA-1.5 shape, trimmed (bpo.models.tiny.LLAVA_CHAT_TEMPLATE)."""
    _, tok, _, processor = toy
    msgs = [user_turn("describe the image .", 1)]
    assert render_prompt(processor, msgs) == "USER: <image>\ndescribe the image . ASSISTANT:"
    full = processor.apply_chat_template(msgs + [{"role": "assistant", "content": "a red circle ."}], tokenize=False)
    assert full == "USER: <image>\ndescribe the image . ASSISTANT: a red circle .</s>"
    assert end_of_turn_ids(processor) == [tok.eos_token_id]


def test_prompt_ids_expand_the_image_into_one_token_per_patch(toy):
    world, tok, _, processor = toy
    ids = PromptCache(processor, 32).ids("describe the image .")
    words = tok.convert_ids_to_tokens(ids)
    assert words == ["<s>", "user", ":"] + ["<image>"] * 16 + ["describe", "the", "image", ".", "assistant", ":"]


def test_decode_round_trips_captions(toy):
    world, tok, _, _ = toy
    for i in range(50):
        cap = world.caption(world.scene("train", i))
        ids = tok(cap, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tok.decode(ids, skip_special_tokens=True) == cap


def test_pixel_tensor_equals_the_processor(toy):
    world, _, _, processor = toy
    scenes = [world.scene("eval", i) for i in range(4)]
    ours = pixel_tensor(np.stack([world.render(s) for s in scenes]), processor)
    theirs = processor.image_processor([world.image(s) for s in scenes], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (4, 3, 32, 32)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_model_is_a_stock_llava(toy):
    _, tok, model, processor = toy
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert model.config.text_config.vocab_size == len(tok)

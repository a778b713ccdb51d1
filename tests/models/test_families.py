"""The hub-shaped tiny families load through bpo's loader with their stock classes and templates."""

from __future__ import annotations

import json

import pytest

from bpo.models.families import FAMILIES, HUB_IDS, build_tiny

STOCK = {"llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
         "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
         "qwen2vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
         "qwen25vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
         "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor")}


def test_every_family_has_a_hub_id():
    assert set(FAMILIES) == set(HUB_IDS) == set(STOCK)


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny("nope", tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_with_stock_classes(family, tiny_family, image_root):
    import torch
    import transformers
    from PIL import Image

    from bpo.models.loading import load

    path = tiny_family(family)
    saved = json.loads(open(f"{path}/processor_config.json").read())
    model_cls, proc_cls = STOCK[family]
    assert saved["processor_class"] == proc_cls  # never a private subclass name
    model, proc = load(path)
    assert type(model).__name__ == model_cls
    assert isinstance(proc, getattr(transformers, proc_cls))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = proc(text=[text], images=[Image.open(f"{image_root}/red.png")], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 3


def test_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a = load_file(str(build_tiny("gemma3", tmp_path / "a", seed=3) / "model.safetensors"))
    b = load_file(str(build_tiny("gemma3", tmp_path / "b", seed=3) / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_count_is_the_models_embedding_count(family, tiny_family, image_root):
    """Length budgets count what the model fills with image embeddings (Gemma 3: mm_tokens_per_image, not 1)."""
    from transformers import AutoConfig

    from bpo.data.records import Record
    from bpo.models.encoding import Encoder
    from bpo.models.loading import load_processor

    path = tiny_family(family)
    config = AutoConfig.from_pretrained(path)
    placeholder = getattr(config, "image_token_id", None)
    if placeholder is None:
        placeholder = config.image_token_index
    enc = Encoder(load_processor(path), image_root)
    rec = Record(id="r", prompt=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                 chosen="x", images=["red.png"])
    ids, vision, _ = enc.encode_prompt(rec)
    n = enc.count_image_tokens(ids)
    assert n == ids.count(placeholder) and n > 1
    if family == "gemma3":
        assert n == config.mm_tokens_per_image
    if family in ("qwen2vl", "qwen25vl"):
        assert n == int(vision["image_grid_thw"].prod()) // 4


def test_load_error_reason_is_never_empty(tmp_path):
    from bpo.errors import BpoError
    from bpo.models.loading import first_line, load_processor

    assert first_line(ValueError("\n\nthe real reason\nmore")) == "the real reason"
    assert first_line(ValueError("")) == "ValueError"
    (tmp_path / "processor_config.json").write_text('{"processor_class": "Qwen2_5_VLProcessor"}')
    with pytest.raises(BpoError, match=r"cannot load a processor .*\(\S"):
        load_processor(str(tmp_path))

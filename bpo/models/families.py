"""Tiny hub-shaped models of each supported family, built locally (no downloads).

API (stable; tests and other modules rely on it)::

    from bpo.models.families import FAMILIES, build_tiny, make_tiny
    path = build_tiny("llava_next", out_dir, seed=0)   # -> Path of a from_pretrained-loadable folder
    model, processor = make_tiny("gemma3", seed=0)     # the same, in memory

In tests, the session fixture ``tiny_family(name) -> str`` (tests/conftest.py) builds each family once.

``FAMILIES`` lists the family names: ``"llava"`` (llava-hf/llava-1.5-7b-hf), ``"llava_next"``
(llava-hf/llava-v1.6-mistral-7b-hf), ``"qwen2vl"`` (Qwen/Qwen2-VL-7B-Instruct), ``"qwen25vl"``
(Qwen/Qwen2.5-VL-7B-Instruct), ``"gemma3"`` (google/gemma-3-4b-it) and ``"idefics3"``
(HuggingFaceM4/Idefics3-8B-Llama3, the architecture of SmolVLM). ``HUB_IDS`` maps each name to the checkpoint it
imitates.

Each folder holds what the hub repository holds, in the same shape: the family's real model class, its real
processor class (``LlavaProcessor``; ``LlavaNextProcessor`` with anyres ``image_grid_pinpoints`` and
``image_sizes``; ``Qwen2VLProcessor``; ``Qwen2_5_VLProcessor``; ``Gemma3Processor`` with ``image_seq_length``;
``Idefics3Processor`` with image splitting),
the published image-processor settings, the published special tokens and bos/eos behaviour, and the chat
template exactly as published (copied by hand from the hub's ``chat_template.json`` / ``tokenizer_config.json``).
Only sizes are scaled down (layers, widths, image resolution, image-token counts); every such change is marked
"scaled" below. The tokenizer is a byte-level BPE trained here on a small corpus, so any text encodes; its
specials and whether it adds ``bos`` match the family's tokenizer.

A build takes 0.15-0.4 s once transformers is imported (measured on the 2-core CI box). Builds are
deterministic in ``seed``.
"""

from __future__ import annotations

from pathlib import Path

from bpo.models.loading import image_only_processor_cls
from bpo.models.tiny import _CORPUS

FAMILIES = ("llava", "llava_next", "qwen2vl", "qwen25vl", "gemma3", "idefics3")
HUB_IDS = {"llava": "llava-hf/llava-1.5-7b-hf", "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf",
           "qwen2vl": "Qwen/Qwen2-VL-7B-Instruct", "qwen25vl": "Qwen/Qwen2.5-VL-7B-Instruct",
           "gemma3": "google/gemma-3-4b-it", "idefics3": "HuggingFaceM4/Idefics3-8B-Llama3"}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# llava-hf/llava-1.5-7b-hf, chat_template.json (verbatim). Content must be a list of parts: a string content
# renders as nothing ("USER: ASSISTANT:"), which is the trap bpo's prompt path must avoid.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf, chat_template.json (verbatim, including its literal '<\\s> ' end of turn).
# A string content crashes it ('str object' has no attribute 'text') on system and assistant turns.
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + "
    "message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '<\\\\s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct, chat_template.json (verbatim; the same template).
QWEN_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in "
    "content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# google/gemma-3-4b-it, tokenizer_config.json (verbatim). It starts with {{ bos_token }}, so nothing may add a
# second <bos> (apply_chat_template tokenizes such prompts with add_special_tokens=False).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)


def _tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, unk: str | None, add_bos: bool,
               vocab_size: int = 400, **named):
    """Byte-level BPE with the family's specials (in the family's order) and bos behaviour.

    ``add_bos``: whether plain ``tokenizer(text)`` prepends ``bos`` (Llama, Mistral and Gemma tokenizers do;
    Qwen2's has no bos at all). ``named`` are model-specific special tokens exposed as attributes
    (Gemma 3's ``boi_token`` / ``eoi_token`` / ``image_token``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    base = {pad, bos, eos, unk}
    extra = [t for t in specials if t not in base and t not in named.values()]
    kwargs = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra,
                                   **{k: v for k, v in kwargs.items() if v is not None}, **named)


def _set_generation(model, tok, eos_ids: list[int]) -> None:
    gc = model.generation_config
    gc.pad_token_id = tok.pad_token_id
    gc.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    gc.bos_token_id = tok.bos_token_id


def _llama_text(tok, hidden: int, layers: int, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                tie_word_embeddings=False, **extra)


def _clip_vision(image_size: int, patch_size: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=image_size, patch_size=patch_size, projection_dim=32)


def _llava(hidden: int, layers: int):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # Llama tokenizer: <unk> 0, <s> 1, </s> 2, then llava-hf's added <image> and <pad>; adds <s>.
    tok = _tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>",
                     unk="<unk>", add_bos=True)
    image_size, patch = 32, 8  # scaled: 336 px / patch 14 (576 image tokens) -> 32 px / patch 8 (16)
    config = LlavaConfig(vision_config=_clip_vision(image_size, patch), text_config=LlamaConfig(**_llama_text(
        tok, hidden, layers)), image_token_id=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=(image_size // patch) ** 2,
        tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(config)
    _set_generation(model, tok, [tok.eos_token_id])
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
        resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                               num_additional_image_tokens=1, image_token="<image>")
    return model, processor


def _llava_next(hidden: int, layers: int):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        MistralConfig,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    # Mistral tokenizer: <unk> 0, <s> 1, </s> 2, then <image>; adds <s>. (The hub repo pads with <unk>.)
    tok = _tokenizer(["<unk>", "<s>", "</s>", "<image>"], bos="<s>", eos="</s>", pad="<unk>", unk="<unk>",
                     add_bos=True)
    image_size, patch = 32, 8  # scaled: 336 px / patch 14 -> 32 px / patch 8
    # scaled: the published pinpoints [[336,672],[672,336],[672,672],[1008,336],[336,1008]] times 32/336
    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    config = LlavaNextConfig(
        vision_config=_clip_vision(image_size, patch), text_config=MistralConfig(**_llama_text(
            tok, hidden, layers, sliding_window=None, head_dim=hidden // 4)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch) ** 2, tie_word_embeddings=False)
    model = LlavaNextForConditionalGeneration(config)
    _set_generation(model, tok, [tok.eos_token_id])
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints, do_center_crop=True, do_resize=True, do_rescale=True, do_normalize=True,
        do_pad=True, do_convert_rgb=True, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", chat_template=LLAVA_NEXT_TEMPLATE,
                                   num_additional_image_tokens=1, image_token="<image>")
    return model, processor


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_common(tok, hidden: int, layers: int) -> tuple[dict, dict]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    head_dim = hidden // 4
    # The published mrope_section [16, 24, 24] splits head_dim 128 / 2 as 1/4 : 3/8 : 3/8; scaled alike.
    section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=None,
                tie_word_embeddings=False)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return text, tokens


def _qwen_tokenizer():
    # Qwen2 tokenizer: no bos; instruct checkpoints end turns (eos) with <|im_end|>, pad with <|endoftext|>.
    return _tokenizer(_QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False)


def _qwen_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Published: patch 14, merge 2, temporal 2, min_pixels 3136, max_pixels 12845056, CLIP mean/std.
    # scaled: max_pixels 112*112 (at most 64 patches = 16 image tokens per image).
    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                    temporal_patch_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                    do_convert_rgb=True, resample=3)


def _qwen_vl(config_cls, model_cls, processor_name: str, hidden: int, layers: int, vision: dict):
    """Qwen2-VL and Qwen2.5-VL: the same tokenizer, text model, turn ends and processor; the vision towers differ."""
    tok = _qwen_tokenizer()
    text, tokens = _qwen_common(tok, hidden, layers)
    model = model_cls(config_cls(text_config=text, vision_config=vision, **tokens))
    _set_generation(model, tok, [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")])
    # Without torchvision the stock class cannot be built (its video processor needs it); the image-only
    # subclass saves itself under the stock name, so the folder is exactly what the hub holds.
    processor = image_only_processor_cls(processor_name)(
        image_processor=_qwen_image_processor(), tokenizer=tok, chat_template=QWEN_VL_TEMPLATE)
    return model, processor


def _qwen2vl(hidden: int, layers: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    return _qwen_vl(Qwen2VLConfig, Qwen2VLForConditionalGeneration, "Qwen2VLProcessor", hidden, layers, vision=dict(
        depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, in_channels=3))


def _qwen25vl(hidden: int, layers: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    # Published vision: depth 32, window 112, full attention in blocks 7/15/23/31; scaled: depth 2, block 1 full.
    return _qwen_vl(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor", hidden, layers,
                    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                                fullatt_block_indexes=[1], in_channels=3, hidden_act="silu", tokens_per_second=2))


def _gemma3(hidden: int, layers: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    # Gemma tokenizer order: <pad> 0, <eos> 1, <bos> 2, <unk> 3, ...; adds <bos> (the template adds it too).
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = _tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
                     boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    # scaled: SigLIP 896 px / patch 14 (64x64 patches pooled to 16x16 = 256 tokens) -> 32 px / patch 4
    # (8x8 patches pooled 2x2 to 4x4 = 16 tokens); the pooling arithmetic is the published one.
    image_size, patch, mm_tokens = 32, 4, 16
    head_dim = hidden // 4
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                max_position_embeddings=4096, sliding_window=16,  # scaled: 1024, shorter than a prompt here too
                layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
                bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                pad_token_id=ids["<pad>"], tie_word_embeddings=True)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image_size, patch_size=patch, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=mm_tokens,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"], tie_word_embeddings=True)
    model = Gemma3ForConditionalGeneration(config)
    _set_generation(model, tok, [ids["<eos>"], ids["<end_of_turn>"]])
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_resize=True, do_rescale=True, do_normalize=True,
        do_convert_rgb=True, do_pan_and_scan=False, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=mm_tokens)
    return model, processor


# HuggingFaceM4/Idefics3-8B-Llama3, chat_template.json (verbatim).
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _idefics3(hidden: int, layers: int):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    # Llama 3 tokenizer (adds <|begin_of_text|>; the template writes it too) + Idefics3's image tokens;
    # turns end with <end_of_utterance> (the hub repo's eos).
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<fake_token_around_image>",
                "<image>", "<end_of_utterance>", "<global-img>"]
    tok = _tokenizer(specials, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<|reserved_special_token_0|>",
                     unk=None, add_bos=True)
    # scaled: SigLIP 364 px / patch 14 (26 x 26 patches, pixel-shuffled by 2 to 169 tokens) -> 32 px / patch 4
    # (8 x 8, shuffled to 16 tokens); images split into 32 px tiles up to 64 px (published 364 / 4 * 364).
    image_size, patch, scale = 32, 4, 2
    seq_len = (image_size // patch) ** 2 // scale ** 2
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", **_llama_text(tok, hidden, layers)), scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config)
    _set_generation(model, tok, [tok.eos_token_id])
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=True,
        do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True, do_pad=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=1)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    return model, processor


_BUILDERS = {"llava": _llava, "llava_next": _llava_next, "qwen2vl": _qwen2vl, "qwen25vl": _qwen25vl,
             "gemma3": _gemma3, "idefics3": _idefics3}


def make_tiny(family: str, *, seed: int = 0, hidden: int = 64, layers: int = 2):
    """(model, processor) of ``family`` in memory, randomly initialised with ``seed``."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    return _BUILDERS[family](hidden, layers)


def build_tiny(family: str, out_dir: str | Path, seed: int = 0, *, hidden: int = 64, layers: int = 2) -> Path:
    """Save a tiny hub-shaped ``family`` model with its processor to ``out_dir``; returns the path."""
    out = Path(out_dir)
    model, processor = make_tiny(family, seed=seed, hidden=hidden, layers=layers)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out

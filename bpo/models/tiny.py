"""Tiny, randomly initialised vision-language models built locally (no downloads).

They are real ``transformers`` architectures (``LlavaForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``) saved with ``save_pretrained`` together with a processor that
has a chat template, so tests and the demo exercise exactly the loading path a user takes with
``llava-hf/llava-1.5-7b-hf`` or ``Qwen/Qwen2-VL-2B-Instruct``: ``from_pretrained(path)``.

The tokenizer is a byte-level BPE trained here on a small built-in corpus, so any text encodes.
"""

from __future__ import annotations

from pathlib import Path

from bpo.models.loading import image_only_processor_cls, quiet_loading

# Shapes of LLaVA-1.5's template, trimmed: "USER: <image>\n{text} ASSISTANT: {answer}</s>"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "a photo of a dog on a couch . the cat sits near the window . two people ride bicycles in the park . "
    "a red bus drives down the street next to a traffic light . there is a bowl of broccoli on the table . "
    "describe the image in detail . what color is the car ? how many people are there ? is there a horse ? "
    "yes , there is . no , there is not . the image shows a man holding an umbrella in the rain . "
    "a bear stands on a horse in a field . the person in the picture is smiling . I cannot help with that . "
    "red green blue yellow circle square triangle star left right top bottom one two three four "
)


def build_tokenizer(special_tokens: list[str], *, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                    vocab_size: int = 400, corpus: str = _CORPUS):
    """A byte-level BPE tokenizer trained on ``corpus`` with the given extra special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [pad, bos, eos, unk] + list(special_tokens)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus] * 4, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk, additional_special_tokens=list(special_tokens))
    return fast


def make_llava(tokenizer, *, image_size: int, patch_size: int, vision_hidden: int, vision_layers: int = 2,
               vision_heads: int = 2, hidden: int, intermediate: int | None = None, layers: int, heads: int = 4,
               kv_heads: int = 2, max_positions: int = 512, vision_feature_layer: int = -2, seed: int = 0,
               chat_template: str = LLAVA_CHAT_TEMPLATE, vision_intermediate: int | None = None,
               vocab_size: int | None = None, build: bool = True):
    """(random ``LlavaForConditionalGeneration``, ``LlavaProcessor``) in memory: CLIP vision + Llama.

    ``vocab_size`` pads the language model's vocabulary beyond the tokenizer's (a real model's lm_head width);
    ``build=False`` returns ``(LlavaConfig, processor)`` without allocating weights (for 7B-shaped benchmarks
    that initialise directly on the GPU)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = tokenizer
    tok.chat_template = chat_template
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_intermediate or vision_hidden * 2,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              image_size=image_size, patch_size=patch_size)
    text = LlamaConfig(vocab_size=max(len(tok), vocab_size or 0), hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                               vision_feature_select_strategy="default", chat_template=chat_template,
                               num_additional_image_tokens=1)
    if not build:
        return config, processor
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    return model, processor


def build_tiny_llava(out_dir: str | Path, *, image_size: int = 32, patch_size: int = 8, hidden: int = 64,
                     layers: int = 2, vision_hidden: int = 32, seed: int = 0, tokenizer=None,
                     chat_template: str = LLAVA_CHAT_TEMPLATE) -> Path:
    """Save a tiny LLaVA (CLIP vision + Llama) with its processor to ``out_dir``; returns the path."""
    out = Path(out_dir)
    model, processor = make_llava(tokenizer or build_tokenizer(["<image>"]), image_size=image_size,
                                  patch_size=patch_size, vision_hidden=vision_hidden, hidden=hidden, layers=layers,
                                  seed=seed, chat_template=chat_template)
    with quiet_loading():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2vl(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny Qwen2-VL (M-RoPE, dynamic-resolution vision) with its processor to ``out_dir``."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
    tok = build_tokenizer(specials, eos="<|endoftext|>")
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    head_dim = hidden // 4
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rope_scaling={"type": "mrope",
                                                                    "mrope_section": [head_dim // 4, head_dim // 8,
                                                                                      head_dim // 8]},
                         bos_token_id=tok.bos_token_id, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    processor = image_only_processor_cls("Qwen2VLProcessor")(image_processor=image_processor, tokenizer=tok,
                                                             chat_template=QWEN_CHAT_TEMPLATE)
    with quiet_loading():
        model.save_pretrained(out)
    processor.save_pretrained(out)  # saved under the stock name Qwen2VLProcessor
    return out

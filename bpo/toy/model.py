"""The toy model: a real ``LlavaForConditionalGeneration`` with a word-level tokenizer over the world.

Everything after pretraining loads it with ``bpo.models.loading.load(path)``, exactly as it would
load ``llava-hf/llava-1.5-7b-hf``: same chat template shape (``USER: <image>\\n... ASSISTANT:``),
same processor class, same image-token expansion. Only the sizes are tiny.

The config is built here rather than with :func:`bpo.models.tiny.build_tiny_llava` because the toy
needs knobs that builder fixes (vision depth and heads, ``vision_feature_layer``): with a one- or
two-layer vision tower LLaVA's ``-2`` would discard half of it, so the toy reads the last layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bpo.config import from_dict, option
from bpo.errors import BpoError
from bpo.models.loading import quiet_loading
from bpo.models.tiny import LLAVA_CHAT_TEMPLATE, make_llava
from bpo.toy.safety import SafetyConfig, SafetyWorld
from bpo.toy.world import World, WorldConfig

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
# Words the chat template itself emits (after lower-casing and splitting off punctuation).
TEMPLATE_WORDS = ("user", "assistant", ":")
META_FILE = "toy.json"  # beside the saved model: world and recipe configs, timings, held-out curves


@dataclass
class ModelConfig:
    """Sizes of the toy LLaVA (CLIP vision tower + MLP projector + Llama)."""

    vision_hidden: int = option(64, help="CLIP vision tower width")
    vision_layers: int = option(1, help="CLIP vision tower depth (the last layer feeds the projector)")
    vision_heads: int = option(2, help="CLIP attention heads")
    hidden: int = option(128, help="Llama width")
    layers: int = option(2, help="Llama depth")
    heads: int = option(
        8, help="Llama attention heads. 4 (width 32) until recipe 3: existence answers then learned late or not at "
        "all (docs/toy.md, POPE third round)")
    kv_heads: int = option(
        8, help="Llama key/value heads; 8 = one per head, as in Llama-2-7B (LLaVA-1.5's LM). 2 (grouped-query) "
        "until recipe 3: the image look-ups and the grammar competed for two key/value projections")
    intermediate: int = option(256, help="Llama MLP width")
    max_positions: int = option(128, help="longest sequence (image tokens included)")


def build_tokenizer(words: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` + template words + special tokens.

    Lower-cases and splits off punctuation (``"circle."`` -> ``circle .``), so user-typed prompts
    and the template's ``USER:`` both tokenise without ``<unk>``; decoding joins words with spaces
    and never "cleans up" the space before punctuation (the caption grammar keeps it).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *TEMPLATE_WORDS, *sorted(set(words))):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos = vocab["<s>"]
    # A leading <s> like Llama's tokenizer; added by the processor on prompts, not on responses.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"],
                                   clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = LLAVA_CHAT_TEMPLATE
    return fast


def build_model(tokenizer, mcfg: ModelConfig, *, image_size: int, patch_size: int, seed: int = 0):
    """(randomly initialised model, processor); nothing is written. The last vision layer feeds the projector."""
    return make_llava(tokenizer, image_size=image_size, patch_size=patch_size, vision_hidden=mcfg.vision_hidden,
                      vision_layers=mcfg.vision_layers, vision_heads=mcfg.vision_heads, hidden=mcfg.hidden,
                      intermediate=mcfg.intermediate, layers=mcfg.layers, heads=mcfg.heads, kv_heads=mcfg.kv_heads,
                      max_positions=mcfg.max_positions, vision_feature_layer=-1, seed=seed,
                      chat_template=LLAVA_CHAT_TEMPLATE)


def save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    with quiet_loading():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_world(model_dir: str | Path) -> World:
    """The :class:`World` a pretrained toy model was built for (from its ``toy.json``)."""
    f = Path(model_dir) / META_FILE
    if not f.is_file():
        raise BpoError(f"{model_dir}: not a toy model directory (no {META_FILE}); build one with "
                       "bpo.toy.pretrain.pretrain()")
    return World(from_dict(WorldConfig, json.loads(f.read_text())["world"]))


def load_safety(model_dir: str | Path) -> SafetyWorld:
    """The :class:`SafetyWorld` a toy model was pretrained with (``pretrain(..., safety=...)``)."""
    meta = json.loads((Path(model_dir) / META_FILE).read_text()) if (Path(model_dir) / META_FILE).is_file() else {}
    if not meta.get("safety"):
        raise BpoError(f"{model_dir}: not a toy model pretrained with the safety scenario; build one with "
                       "bpo.toy.pretrain.pretrain(..., safety=SafetyConfig())")
    return SafetyWorld(load_world(model_dir), from_dict(SafetyConfig, meta["safety"]))

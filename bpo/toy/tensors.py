"""In-memory training tensors for the toy recipe, built through the model's own processor.

Prompts are rendered with the processor's chat template (so the image tokens are expanded exactly
as every later stage expands them) once per distinct question; responses are tokenised on their
own and end with ``</s>``, which is how :class:`bpo.models.encoding.Encoder` encodes them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bpo.toy.world import DESCRIBE_PROMPTS, Scene, World

IGNORE = -100


def pixel_tensor(images: np.ndarray, processor) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` -> the processor's normalised ``float [N, 3, H, W]``.

    The toy images already have the model's input size, so CLIP preprocessing reduces to
    rescale + normalise; a test checks this equals ``processor(images=...)`` exactly.
    """
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


class PromptCache:
    """Token ids of a rendered user turn (with or without an image), memoised by question text."""

    def __init__(self, processor, image_size: int):
        from PIL import Image

        self.processor = processor
        self.tok = processor.tokenizer
        self._dummy = Image.new("RGB", (image_size, image_size))
        self._cache: dict[tuple[str, bool], list[int]] = {}

    def ids(self, question: str, image: bool = True) -> list[int]:
        key = (question, image)
        if key not in self._cache:
            from bpo.data.records import user_turn
            from bpo.models.chat import add_special_tokens
            from bpo.models.encoding import render_prompt

            text = render_prompt(self.processor, [user_turn(question, 1 if image else 0)])
            kwargs = {"images": [self._dummy]} if image else {}
            kwargs["add_special_tokens"] = add_special_tokens(self.tok, text)  # as the Encoder tokenises
            self._cache[key] = self.processor(text=[text], return_tensors="pt", **kwargs)["input_ids"][0].tolist()
        return self._cache[key]

    def answer(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]


def _pad(rows: list[tuple[list[int], int]], pad_id: int) -> dict:
    """Right-padded input_ids / attention_mask / labels; labels cover tokens from ``start`` on."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for r, (ids, start) in enumerate(rows):
        t = torch.tensor(ids)
        input_ids[r, : len(ids)] = t
        attention[r, : len(ids)] = 1
        labels[r, start: len(ids)] = t[start:]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


@dataclass
class AlignData:
    """Rendered training scenes, per-cell labels and (image, question, answer) examples."""

    pixels: torch.Tensor  # [N, 3, H, W]
    cell_labels: torch.Tensor  # [N, grid*grid]: 0 = empty, 1 + kind index
    rows: list[tuple[list[int], int, int]]  # (ids, answer start, image index)
    pad_id: int

    @classmethod
    def build(cls, world: World, processor, n_images: int, seed: int, per_image: int = 2,
              extra: list[tuple[Scene, str, str]] = (), exist_share: float = 0.2) -> AlignData:
        """``n_images`` train scenes with ``per_image`` QA each, plus ``extra`` (scene, question, answer) rows."""
        cfg = world.cfg
        prompts = PromptCache(processor, cfg.image_size)
        scenes = [world.scene("train", i) for i in range(n_images)] + [s for s, _, _ in extra]
        pixels = pixel_tensor(np.stack([world.render(s) for s in scenes]), processor)
        labels = torch.tensor([world.cell_labels(s) for s in scenes], dtype=torch.long)
        rows = []
        for i, s in enumerate(scenes[:n_images]):
            for k in range(per_image):
                _, question, answer = world.qa(s, seed * 1000 + k, exist_share)
                p = prompts.ids(question)
                rows.append((p + prompts.answer(answer), len(p), i))
        for i, (_, question, answer) in enumerate(extra, start=n_images):
            p = prompts.ids(question)
            rows.append((p + prompts.answer(answer), len(p), i))
        return cls(pixels, labels, rows, processor.tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: torch.Tensor) -> dict:
        picked = [self.rows[int(i)] for i in idx]
        out = _pad([(ids, start) for ids, start, _ in picked], self.pad_id)
        out["pixel_values"] = self.pixels[[img for _, _, img in picked]]
        return out


def _interleave(stream: list[int], items: list[list[int]], eos: int, rng: np.random.Generator) -> list[int]:
    """``stream`` with each of ``items`` inserted whole at a random point between two stream items.

    Stream items are delimited by ``</s>`` (each ends with it); cutting anywhere else would split a
    sentence.
    """
    ends = [i + 1 for i, t in enumerate(stream) if t == eos]
    cuts = sorted(zip(rng.choice([0, *ends], size=len(items)), range(len(items))))
    out, prev = [], 0
    for cut, k in cuts:
        out += stream[prev:cut] + items[k]
        prev = cut
    return out + stream[prev:]


@dataclass
class TextData:
    """The biased text-only corpus: raw sentences and text-only chat turns.

    For language-model pretraining the items are packed end to end into fixed-length rows (no
    padding, as in LLM pretraining); ``chat`` keeps the chat turns separately for replay during
    alignment, where only the answer is a target.
    """

    packed: torch.Tensor  # [rows, seq_len]
    chat: list[tuple[list[int], int]]
    pad_id: int
    tokenizer: object = None

    @classmethod
    def build(cls, world: World, processor, n: int, seq_len: int = 64, seed: int = 0,
              chat_fraction: float = 0.0, extra_chats: list[tuple[str, str]] = ()) -> TextData:
        """``n`` corpus sentences (``chat_fraction`` of them as chat turns) plus ``extra_chats`` (always chats).

        The extra chats are shuffled into the stream with their own generator, so a corpus without
        them is token for token what it was before they existed (cached toy models stay valid).
        """
        prompts = PromptCache(processor, world.cfg.image_size)
        tok = processor.tokenizer
        pairs = [world.text_chat(i) for i in range(n)]
        answers = tok([a for _, a in pairs], add_special_tokens=False)["input_ids"]
        eos, bos = tok.eos_token_id, tok.bos_token_id
        chat, stream = [], []
        rng = np.random.default_rng(seed)
        is_chat = rng.random(n) < chat_fraction
        for i in rng.permutation(n):
            question, _ = pairs[i]
            p = prompts.ids(question, image=False)
            chat.append((p + answers[i] + [eos], len(p)))
            # Plain text plus text-only chat turns (a chat-tuned LLM's data).
            stream += (p + answers[i] + [eos]) if is_chat[i] else ([bos] + answers[i] + [eos])
        if extra_chats:
            pieces = [stream]
            for question, answer in extra_chats:
                ids = prompts.ids(question, image=False)
                row = ids + tok(answer, add_special_tokens=False)["input_ids"] + [eos]
                chat.append((row, len(ids)))
                pieces.append(row)
            # The corpus keeps its order; each extra chat goes in at a random item boundary.
            stream = _interleave(stream, pieces[1:], eos, np.random.default_rng([seed, 1]))
        rows = len(stream) // seq_len
        packed = torch.tensor(stream[: rows * seq_len]).view(rows, seq_len)
        return cls(packed, chat, tok.pad_token_id, tok)

    def __len__(self) -> int:
        return len(self.packed)

    def batch(self, idx: torch.Tensor) -> dict:
        """Packed rows; every token is a target."""
        ids = self.packed[idx]
        return {"input_ids": ids, "labels": ids}

    def chat_batch(self, idx: torch.Tensor) -> dict:
        """Chat turns (padded), loss on the answers only."""
        return _pad([self.chat[int(i)] for i in idx], self.pad_id)


@torch.no_grad()
def greedy_captions(model, processor, pixels: torch.Tensor, prompt: str = DESCRIBE_PROMPTS[0],
                    max_new_tokens: int = 16, batch_size: int = 128) -> list[str]:
    """Greedy answers to one image question for a batch of (already normalised) images."""
    image_size = pixels.shape[-1]
    ids = torch.tensor([PromptCache(processor, image_size).ids(prompt)])
    out: list[str] = []
    was_training = model.training
    model.eval()
    for s in range(0, len(pixels), batch_size):
        pv = pixels[s: s + batch_size]
        inp = ids.expand(len(pv), -1)
        gen = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), pixel_values=pv,
                             max_new_tokens=max_new_tokens, do_sample=False)
        out += processor.tokenizer.batch_decode(gen[:, inp.shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return out

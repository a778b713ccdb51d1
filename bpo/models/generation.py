"""Batched generation over records: the engine behind ``bpo bootstrap`` and ``bpo generate``.

One :class:`Request` is one prompt to answer (a record's messages + images, optionally with a
transform applied to its vision tensors, e.g. diffusion noise). :class:`HFEngine` encodes each
request with :class:`bpo.models.encoding.Encoder` (so prompts are rendered exactly as in training),
groups requests of similar length into left-padded batches, and calls ``model.generate`` with a KV
cache.

Determinism: sampling does not use torch's global RNG. Each request gets its own generator seeded
from ``(seed, request key)`` and a token is drawn as ``argmax(logits / T + Gumbel noise)`` (the
Gumbel-max trick, an exact sample from ``softmax(logits / T)`` after top-p filtering). A record's
answer therefore depends only on the seed and its own key, never on which records share its batch
or on the batch size. Greedy decoding is the special case ``temperature == 0``.

The model's own ``generation_config`` sampling defaults (temperature, top_p, repetition penalty)
are not used: the settings that produced a negative are exactly the ones recorded in its ``meta``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bpo.data.records import Record, message_text
from bpo.errors import BpoError, RecordError
from bpo.io import stable_hash
from bpo.models.encoding import Encoder, end_of_turn_ids
from bpo.models.loading import _check_exists, first_line, load, resolve_dtype

# Multimodal projector modules (the output is the sequence of image embeddings fed to the LM).
PROJECTOR_SUFFIXES = ("multi_modal_projector", "mm_projector", "visual.merger", "model.connector")


@dataclass
class SamplingSettings:
    """How to decode. ``temperature == 0`` means greedy; ``stop`` strings end (and are cut from) answers."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0  # only the benchmark uses it (to force equal lengths)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise BpoError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise BpoError(f"temperature must be >= 0 (0 = greedy), not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BpoError(f"top_p must be in (0, 1], not {self.top_p}")
        self.stop = tuple(s for s in self.stop if s)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_meta(self) -> dict:
        meta: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                                "max_new_tokens": self.max_new_tokens}
        if self.stop:
            meta["stop"] = list(self.stop)
        return meta


def derive_seed(*parts: Any) -> int:
    """A 60-bit seed from any JSON-able parts, e.g. ``(seed, record_id, step)``; stable across runs."""
    return int(stable_hash(list(parts))[:15], 16)


def cpu_generator(*parts: Any) -> torch.Generator:
    # CPU generators make the random stream identical on every device (CPU, CUDA, MPS).
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


@dataclass
class Request:
    """One prompt to answer.

    ``key`` is unique within a call and seeds sampling. ``vision_transform`` maps this request's
    vision tensors (e.g. adds noise to ``pixel_values``); ``feature_transform`` maps its rows of the
    projected image embeddings (used with :func:`projector_hook`).
    """

    key: str
    record: Record
    vision_transform: Callable[[dict], dict] | None = None
    feature_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Generation:
    key: str
    text: str = ""
    n_tokens: int = 0
    error: RecordError | None = None


@dataclass
class Encoded:
    request: Request
    prompt_ids: list[int]
    vision: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    n_image_tokens: int = 0


class RowSampler:
    """Per-row seeded sampling as a logits processor: returns ``logits / T`` (top-p filtered) + Gumbel noise.

    The caller then takes the argmax, which is a sample from the filtered softmax. Each row draws
    from its own CPU generator, so a row's tokens do not depend on its batch mates.
    """

    def __init__(self, generators: Sequence[torch.Generator], temperature: float, top_p: float):
        self.generators = list(generators)
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1:
            scores = top_p_filter(scores, self.top_p)
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp_(1e-12, 1 - 1e-12)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (always >= 1 token)."""
    sorted_scores, idx = torch.sort(scores, descending=True, dim=-1)
    probs = sorted_scores.softmax(dim=-1)
    # A token is dropped when the mass *before* it already reaches top_p.
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop = drop_sorted.scatter(-1, idx, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    cut = len(text)
    for s in stops:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


def find_projector(model) -> torch.nn.Module:
    """The module whose output is the image embeddings (LLaVA's projector, Qwen2-VL's merger)."""
    for name, module in model.named_modules():
        if name.endswith(PROJECTOR_SUFFIXES):
            return module
    raise BpoError(f"{type(model).__name__} has no multimodal projector module (looked for names ending in "
                   f"{', '.join(PROJECTOR_SUFFIXES)}); use --noise-target pixels")


def find_language_model(model) -> torch.nn.Module | None:
    """The decoder that receives the merged text + image embeddings (``inputs_embeds``)."""
    found = [(name, m) for name, m in model.named_modules() if name.split(".")[-1] == "language_model"]
    return min(found, key=lambda nm: len(nm[0]))[1] if found else None


def _image_token_mask(batch: Sequence[Encoded], length: int, image_ids: set[int]) -> torch.Tensor:
    # The left-padded layout of HFEngine.collate: row i's prompt ends at the right edge.
    mask = torch.zeros((len(batch), length), dtype=torch.bool)
    for i, e in enumerate(batch):
        k = len(e.prompt_ids)
        mask[i, length - k:] = torch.tensor([t in image_ids for t in e.prompt_ids], dtype=torch.bool)
    return mask


@contextlib.contextmanager
def projector_hook(model, batch: Sequence[Encoded], image_token_ids: set[int] | None = None):
    """While active, each request's image features go through its ``feature_transform``.

    Where the projector emits one row per image token (LLaVA-1.5 [n_img, tokens, d], Qwen2-VL [tokens, d],
    Gemma 3's pooled [n_img, mm_tokens_per_image, d]), request i owns the next ``n_image_tokens`` rows of
    its output. Where it does not (LLaVA-NeXT anyres: features per crop, unpadded and given newline rows
    only afterwards), the noise goes on the final image features instead: the rows of the language
    model's ``inputs_embeds`` at the image-token positions, which are one per image token by construction.
    """
    counts = [e.n_image_tokens for e in batch]
    transforms = [e.request.feature_transform for e in batch]
    if not any(transforms):
        yield
        return
    image_ids = set(image_token_ids or ())
    if not image_ids:
        cfg = model.config
        image_ids = {v for v in (getattr(cfg, "image_token_id", None), getattr(cfg, "image_token_index", None))
                     if isinstance(v, int)}
    state = {"projected": False}
    lm = find_language_model(model)
    # Anyres models' projector rows are per crop; a coincidentally equal count must not be taken as tokens.
    anyres = getattr(model.config, "image_grid_pinpoints", None) is not None

    def apply(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(c) if fn is not None else c for c, fn in zip(rows.split(counts), transforms)])

    def hook(_module, _inputs, output):
        if not torch.is_tensor(output):
            return None
        flat = output.reshape(-1, output.shape[-1])
        if anyres or flat.shape[0] != sum(counts):
            if lm is None:
                raise BpoError(f"projector output has {flat.shape[0]} rows but the batch has {sum(counts)} image "
                               "tokens, and the model has no language_model module to noise them in; use "
                               "--noise-target pixels")
            return None  # not one row per image token: noised after packing, in the language model's input
        state["projected"] = True
        return apply(flat).reshape(output.shape)

    def lm_hook(_module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if state["projected"] or embeds is None or embeds.shape[1] == 1:
            return None  # done by the projector hook, or a cached decoding step (no image tokens)
        mask = _image_token_mask(batch, embeds.shape[1], image_ids).to(embeds.device)
        if int(mask.sum()) != sum(counts):
            raise BpoError(f"the batch has {sum(counts)} image tokens but {int(mask.sum())} image positions; "
                           "feature noise cannot be assigned to records for this model (use --noise-target pixels)")
        embeds = embeds.clone()
        embeds[mask] = apply(embeds[mask]).to(embeds.dtype)
        return args, {**kwargs, "inputs_embeds": embeds}

    handles = [find_projector(model).register_forward_hook(hook)]
    if lm is not None:
        handles.append(lm.register_forward_pre_hook(lm_hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class TextOnlyProcessor:
    """Lets a plain tokenizer stand in for a processor (text-only LMs used for error injection).

    Without a chat template the prompt is wrapped in the Vicuna v1 system template, which is what
    the paper's error-injection script used for LLaVA-1.5's backbone.
    """

    VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions. USER: {input} ASSISTANT:")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kw):
        if self.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                      tokenize=tokenize, **kw)
        text = "\n".join(message_text(m) for m in messages if m.get("role") == "user")
        return self.VICUNA.format(input=text)

    def __call__(self, text, return_tensors=None, **kw):
        bos = self.tokenizer.bos_token
        first = text[0] if isinstance(text, list) else text
        # The chat template may already start with BOS; do not add a second one.
        add = not (bos and first.startswith(bos))
        return self.tokenizer(text, return_tensors=return_tensors, add_special_tokens=add)


class HFEngine:
    """Batched ``transformers`` generation. ``batch_size`` requests per forward, shortest-first."""

    name = "hf"

    def __init__(self, model, processor, *, image_root=None, batch_size: int = 8):
        if batch_size < 1:
            raise BpoError(f"batch_size must be >= 1, not {batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.batch_size = batch_size
        self.encoder = Encoder(processor, image_root, max_length=1 << 30)
        eos = list(end_of_turn_ids(processor))
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        # The checkpoint's own stop ids too (Qwen2-VL-Instruct: <|im_end|> and <|endoftext|>), as generate() uses.
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.extend([gen_eos] if isinstance(gen_eos, int) else [i for i in gen_eos or [] if isinstance(i, int)])
        self.eos_ids = sorted(set(eos))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- encoding / batching ----------------------------------------------------------------------
    def encode_one(self, req: Request, *, transform: bool = True) -> Encoded:
        rec = req.record
        try:
            ids, vision, extras = self.encoder.encode_prompt(rec)
        except RecordError as exc:
            raise RecordError(exc.reason, where=exc.where or rec.meta.get("_where"), record_id=rec.id) from None
        except BpoError as exc:  # e.g. the chat template failed on this record
            raise RecordError(str(exc), where=rec.meta.get("_where"), record_id=rec.id) from None
        if transform and req.vision_transform is not None and vision:
            vision = req.vision_transform(vision)
        return Encoded(req, ids, vision, extras, self.encoder.count_image_tokens(ids))

    def encode(self, requests: Sequence[Request]) -> tuple[list[Encoded], list[Generation]]:
        """Encode every request; per-request failures come back as :class:`Generation` with ``error``."""
        done, failed = [], []
        for req in requests:
            try:
                done.append(self.encode_one(req))
            except RecordError as exc:
                failed.append(Generation(req.key, error=exc))
        return done, failed

    def collate(self, batch: Sequence[Encoded]) -> dict:
        """Left-padded ``input_ids``/``attention_mask``/per-token extras plus concatenated vision tensors."""
        from bpo.models.logprobs import cat_vision

        length = max(len(e.prompt_ids) for e in batch)
        n = len(batch)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, length), dtype=torch.long)
        extras = {k: torch.zeros((n, length), dtype=torch.long) for k in batch[0].extras}
        for i, e in enumerate(batch):
            k = len(e.prompt_ids)
            input_ids[i, length - k:] = torch.tensor(e.prompt_ids)
            attention[i, length - k:] = 1
            for key in extras:
                extras[key][i, length - k:] = torch.tensor(e.extras[key])
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, **extras}
        with_vision = [e.vision for e in batch if e.vision]
        if with_vision:
            inputs.update(cat_vision(with_vision))
        dtype = self.model.dtype
        return {k: (v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()}

    def batches(self, encoded: list[Encoded]) -> list[list[Encoded]]:
        # Similar lengths together wastes less compute on padding; results are re-ordered by key.
        ordered = sorted(encoded, key=lambda e: len(e.prompt_ids))
        return [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    # -- generation -------------------------------------------------------------------------------
    def sampler(self, batch: Sequence[Encoded], settings: SamplingSettings) -> RowSampler | None:
        if settings.greedy:
            return None
        gens = [cpu_generator(settings.seed, e.request.key) for e in batch]
        return RowSampler(gens, settings.temperature, settings.top_p)

    def generate_batch(self, batch: Sequence[Encoded], settings: SamplingSettings) -> list[list[int]]:
        """New token ids per row (before any end-of-turn token) for one padded batch."""
        from transformers import GenerationConfig, LogitsProcessorList

        inputs = self.collate(batch)
        config = GenerationConfig(max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                                  do_sample=False, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                                  repetition_penalty=1.0, use_cache=True)
        extra: dict[str, Any] = {}
        if settings.stop:
            # Ends a row early; the text is still cut at the stop string in decode().
            config.stop_strings = list(settings.stop)
            extra["tokenizer"] = self.tokenizer
        sampler = self.sampler(batch, settings)
        processors = LogitsProcessorList([sampler] if sampler else [])
        with torch.inference_mode(), projector_hook(self.model, batch, self.encoder.image_token_ids):
            out = self.model.generate(**inputs, generation_config=config, logits_processor=processors, **extra)
        return [self.strip_eos(row) for row in out[:, inputs["input_ids"].shape[1]:].tolist()]

    def strip_eos(self, tokens: list[int]) -> list[int]:
        for i, t in enumerate(tokens):
            if t in self.eos_ids:
                return tokens[:i]
        return tokens

    def decode(self, tokens: list[int], settings: SamplingSettings) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return cut_at_stop(text, settings.stop).strip()

    def generate(self, requests: Sequence[Request], settings: SamplingSettings, *,
                 batch_fn: Callable[[list[Encoded]], list[list[int]]] | None = None) -> list[Generation]:
        """One :class:`Generation` per request, in request order. ``batch_fn`` replaces ``model.generate``."""
        if len({r.key for r in requests}) != len(requests):
            raise BpoError("request keys must be unique within a call")
        encoded, failed = self.encode(requests)
        results = {g.key: g for g in failed}
        run = batch_fn or (lambda b: self.generate_batch(b, settings))
        for batch in self.batches(encoded):
            for e, tokens in zip(batch, run(batch)):
                results[e.request.key] = Generation(e.request.key, self.decode(tokens, settings), len(tokens))
        return [results[r.key] for r in requests]


def build_hf_engine(model_path: str, *, dtype: str = "float32", adapter: str | None = None,
                    image_root=None, batch_size: int = 8, device=None) -> HFEngine:
    """Load a model + processor with :func:`bpo.models.loading.load` and wrap them in an engine."""
    model, processor = load(model_path, dtype=dtype, adapter=adapter, device=device)
    return HFEngine(model, processor, image_root=image_root, batch_size=batch_size)


def build_text_engine(lm_path: str, *, dtype: str = "float32", batch_size: int = 8, device=None) -> HFEngine:
    """A text-only causal LM (``--backend hf`` for error injection) behind the same engine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_exists(lm_path)
    try:
        tok = AutoTokenizer.from_pretrained(lm_path)
        from bpo.models.loading import quiet_loading, refuse_pickled_weights

        refuse_pickled_weights(lm_path, "language model")
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(lm_path, dtype=resolve_dtype(dtype), use_safetensors=True)
    except (OSError, ValueError) as exc:
        msg = first_line(exc)
        raise BpoError(f"cannot load language model {lm_path!r}: {msg}") from None
    if device is not None:
        model.to(device)
    model.eval()
    return HFEngine(model, TextOnlyProcessor(tok), batch_size=batch_size)

"""Shared-prefix log-probs: run each prompt (and its images) once, then score all 1 + K responses.

Peers (TRL, LLaMA-Factory, ms-swift, RLAIF-V) build one row ``prompt + response`` per response,
so the vision tower and the ~600-token LLaVA-1.5 prompt run 1 + K times per example, in the policy
pass and again in the reference pass. Here an example costs one prefix pass plus 1 + K short
response passes:

1. **Prefix pass** over ``prompt[:-1]`` (B rows, right- or left-padded, vision tensors once per
   example) with ``use_cache=True``; only the KV cache is kept.
2. The cache is expanded to the R = sum(1 + K_i) response rows with ``index_select`` on the batch
   dim. It stays in the autograd graph, so gradients of every response flow back into the shared
   prefix (and into the vision tower / projector / LoRA weights that produced it).
3. **Response pass** over ``[last prompt token] + response`` (right-padded) attending to the
   expanded cache. Moving the last prompt token into this pass is what produces the logits that
   predict the first response token, without materialising any logits in the prefix pass.

Positions are explicit, so padding never shifts them: a token's position is its index among the
*real* tokens of its row (what the plain right-padded path uses). For Qwen2-VL-style M-RoPE the
prefix's 3-D positions come from the model's own ``get_rope_index`` and a response token at real
index ``t`` gets ``t + rope_delta`` on all three axes, which is how ``generate`` continues a cached
prompt. Models we have not verified fall back to the plain path (``fast_path=auto``), with a reason.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from bpo.errors import BpoError
from bpo.models.encoding import EncodedExample
from bpo.models.logprobs import (
    _to_device,
    cat_vision,
    example_logps,
    model_device,
    model_dtype,
    scatter_rows,
    to_device,
    token_logps,
)

# Decoders with plain causal attention and 1-D RoPE: a cached prefix + explicit positions is exact.
_TEXT_BACKBONES = {"llama", "mistral", "qwen2", "qwen3", "vicuna", "phi3", "granite", "olmo2"}
# Wrappers that only splice image features into the token embeddings of such a decoder.
_LLAVA_FAMILY = {"llava", "llava_next", "llava_onevision", "vipllava"}
# M-RoPE: 3-D positions from get_rope_index, text continues at index + rope_delta.
_MROPE = {"qwen2_vl", "qwen2_5_vl"}


def _unwrap(model):
    """The HF model under accelerate/peft wrappers (DDP is rejected by :func:`unsupported_reason`)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _is_fsdp2(model) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def _cache_kwarg(base) -> str:
    """``cache`` where the model's forward takes it (transformers >= 5.24), else ``past_key_values``."""
    try:
        return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def unsupported_reason(model) -> str | None:
    """Why the shared-prefix path cannot be used for ``model`` right now, or None if it can.

    Checked per call because one reason is dynamic: gradient checkpointing drops the KV cache while
    the model is in training mode (transformers forces ``use_cache=False``), but the reference pass
    runs in eval mode and can still share prefixes.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # Two forwards per backward through one DDP wrapper is not a pattern DDP's reducer supports.
        return "multi-process (DDP) training"
    if _is_fsdp2(model):
        # The prefix forward's gathered weights are resharded before the suffix forward; backward then
        # finds freed storage (seen on torch 2.13). ZeRO-2/3 re-gather per forward and are fine.
        return "FSDP2 sharding"
    base = _unwrap(model)
    config = getattr(base, "config", None)
    kind = getattr(config, "model_type", None)
    if kind in _MROPE:
        if _rope_index_fn(base) is None:
            return f"{kind}: no get_rope_index found"
    elif kind in _LLAVA_FAMILY:
        text_kind = getattr(getattr(config, "text_config", None), "model_type", None)
        if text_kind not in _TEXT_BACKBONES:
            return f"{kind} with a {text_kind!r} language model is not verified for shared prefixes"
    elif kind not in _TEXT_BACKBONES:
        return f"model type {kind!r} is not verified for shared prefixes"
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.x name
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    if checkpointing and base.training:
        return "gradient checkpointing (it disables the KV cache while training)"
    return None


def _rope_index_fn(base):
    for mod in (getattr(base, "model", None), base):
        fn = getattr(mod, "get_rope_index", None)
        if callable(fn):
            return fn
    return None


@dataclass
class PrefixBatch:
    """Prompts once per example, responses once per (example, response)."""

    prefix: dict  # input_ids/attention_mask [B, P] of prompt[:-1], vision tensors, per-token extras
    prefix_len: torch.Tensor  # [B] real tokens of each prefix
    seg_ids: torch.Tensor  # [R, S] last prompt token + response, right-padded
    seg_mask: torch.Tensor  # [R, S]
    seg_extras: dict  # per-token extras of the segment (e.g. mm_token_type_ids), [R, S]
    example_index: torch.Tensor  # [R]
    response_index: torch.Tensor  # [R]


def _pad_rows(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
    length = max(map(len, rows))
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            if side == "left":
                out[r, length - len(row):] = torch.tensor(row)
            else:
                out[r, : len(row)] = torch.tensor(row)
    return out


def collate_shared(examples: list[EncodedExample], pad_id: int, pad_side: str = "right") -> PrefixBatch:
    """Build a :class:`PrefixBatch`; ``pad_side`` is where the prefix rows are padded."""
    if pad_side not in ("left", "right"):
        raise BpoError(f"pad_side must be 'left' or 'right', not {pad_side!r}")
    prefixes, segs, ex_idx, resp_idx = [], [], [], []
    keys = list(examples[0].token_extras)
    pre_extras: dict[str, list] = {k: [] for k in keys}
    seg_extras: dict[str, list] = {k: [] for k in keys}
    for i, ex in enumerate(examples):
        if len(ex.prompt_ids) < 2:
            raise BpoError(f"record {ex.id}: a prompt needs >= 2 tokens for shared-prefix scoring")
        prefixes.append(ex.prompt_ids[:-1])
        for key in keys:
            pre_extras[key].append(ex.token_extras[key][:-1])
        for k, resp in enumerate(ex.response_ids):
            segs.append([ex.prompt_ids[-1]] + list(resp))
            ex_idx.append(i)
            resp_idx.append(k)
            for key in keys:
                seg_extras[key].append([ex.token_extras[key][-1]] + [0] * len(resp))
    prefix = {"input_ids": _pad_rows(prefixes, pad_id, pad_side),
              "attention_mask": _pad_rows([[1] * len(p) for p in prefixes], 0, pad_side)}
    for key in keys:
        prefix[key] = _pad_rows(pre_extras[key], 0, pad_side)
    vision = [ex.vision for ex in examples if ex.vision]
    if vision:
        prefix.update(cat_vision(vision))
    return PrefixBatch(prefix=prefix, prefix_len=torch.tensor([len(p) for p in prefixes]),
                       seg_ids=_pad_rows(segs, pad_id, "right"),
                       seg_mask=_pad_rows([[1] * len(s) for s in segs], 0, "right"),
                       seg_extras={k: _pad_rows(v, 0, "right") for k, v in seg_extras.items()},
                       example_index=torch.tensor(ex_idx), response_index=torch.tensor(resp_idx))


def _mrope_prefix_positions(base, inputs: dict) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(3-D prefix positions or None for text-only batches, rope deltas [B, 1]) from the model's own code."""
    batch = inputs["input_ids"].shape[0]
    zeros = torch.zeros((batch, 1), dtype=torch.long, device=inputs["input_ids"].device)
    if inputs.get("image_grid_thw") is None and inputs.get("video_grid_thw") is None:
        return None, zeros  # text only: 1-D positions, delta 0 (what the model itself does)
    fn = _rope_index_fn(base)
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in inputs.items() if k in params and k != "input_ids"}
    positions, deltas = fn(inputs["input_ids"], **kwargs)
    return positions, deltas.reshape(batch, 1).to(zeros.device)


def shared_row_logps(model, batch: PrefixBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each response row and its token count: ``([R], [R])``, like ``row_logps``."""
    device, dtype = model_device(model), model_dtype(model)
    base = _unwrap(model)
    mrope = getattr(base.config, "model_type", None) in _MROPE
    pre = _to_device(batch.prefix, device, dtype)
    mask = pre["attention_mask"]
    real_index = (mask.cumsum(-1) - 1).clamp(min=0)  # index among the row's real tokens
    if mrope:
        positions, deltas = _mrope_prefix_positions(base, pre)
        pre_pos = positions if positions is not None else real_index
    else:
        pre_pos, deltas = real_index, torch.zeros((mask.shape[0], 1), dtype=torch.long, device=device)
    # Every host-to-device copy before the prefix forward: on CUDA a (pageable) copy waits for the stream, so a
    # copy placed after the forward would stall the host until the whole prefix pass has run on the GPU.
    rows = to_device(batch.example_index, device)
    seg_ids = to_device(batch.seg_ids, device)
    seg_mask = to_device(batch.seg_mask, device)
    prefix_len = to_device(batch.prefix_len, device)
    extras = {k: to_device(v, device) for k, v in batch.seg_extras.items()}
    out = model(**pre, position_ids=pre_pos, use_cache=True, logits_to_keep=1)
    # transformers 5.x renamed past_key_values to cache (the old name warns on every forward); an output
    # with a `cache` field is from a model whose forward takes `cache`.
    cache = getattr(out, "cache", None)
    cache_kw = "cache" if cache is not None else _cache_kwarg(base)
    if cache is None:
        cache = out.past_key_values
    del out
    cache.reorder_cache(rows)  # index_select: differentiable, so gradients reach the shared prefix

    steps = torch.arange(seg_ids.shape[1], device=device)
    seg_pos = prefix_len[rows, None] + steps + deltas[rows]
    if mrope:
        seg_pos = seg_pos.unsqueeze(0).expand(3, -1, -1)
    full_mask = torch.cat([mask[rows], seg_mask], dim=1)
    logits = model(input_ids=seg_ids, attention_mask=full_mask, position_ids=seg_pos, use_cache=True,
                   **{cache_kw: cache}, **extras).logits
    targets = seg_ids[:, 1:]
    tmask = seg_mask[:, 1:].bool()
    lp = token_logps(logits[:, :-1], targets).masked_fill(~tmask, 0.0)
    return lp.sum(-1), tmask.sum(-1)


def shared_example_logps(model, examples: list[EncodedExample], pad_id: int, pad_side: str = "right"):
    """Drop-in for :func:`bpo.models.logprobs.example_logps`: ``logps, counts, valid`` of shape [B, 1+Kmax]."""
    batch = collate_shared(examples, pad_id, pad_side)
    lp, n = shared_row_logps(model, batch)
    return scatter_rows(lp, n, batch, len(examples))


class LogpsPath:
    """Choose shared or plain log-probs per call, per ``run.fast_path``; say once why it fell back."""

    def __init__(self, mode: str = "auto", log=print):
        if mode not in ("auto", "shared", "plain"):
            raise BpoError(f"run.fast_path must be auto, shared or plain, not {mode!r}")
        self.mode = mode
        self.log = log
        self._said: set[str] = set()

    def __call__(self, model, examples: list[EncodedExample], pad_id: int):
        if self.mode != "plain":
            reason = unsupported_reason(model)
            if reason is None:
                return shared_example_logps(model, examples, pad_id)
            if self.mode == "shared":
                raise BpoError(f"run.fast_path=shared is not supported here: {reason}; use run.fast_path=auto "
                               "or plain")
            if reason not in self._said:
                self._said.add(reason)
                self.log(f"fast path off ({reason}): scoring each response with its own copy of the prompt")
        return example_logps(model, examples, pad_id)

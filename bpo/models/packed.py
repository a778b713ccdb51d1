"""Packed log-probs: one forward per pass for the prompt (with its images) and all of its 1 + K responses.

Peers (TRL, LLaMA-Factory, ms-swift, RLAIF-V) build one row ``prompt + response`` per response, so the
vision tower and the ~600-token LLaVA-1.5 prompt run 1 + K times per example. Here an example is laid out
once as ``[prompt | r_0 | r_1 | ... | r_K]`` and scored in **one** forward with a prefix-sharing mask:

- prompt tokens attend causally to the prompt;
- each response token attends to the whole prompt and causally to its own response, never to another one;
- positions restart for every response at the prompt's end (``P + j``), so each response sees exactly what
  it would see in its own row. For Qwen2-VL / Qwen2.5-VL (M-RoPE) the prompt's 3-D positions come from the
  model's own ``get_rope_index`` and response token ``j`` gets ``P + j + rope_delta`` on all three axes,
  which is how ``generate`` continues a prompt.

The vision tower runs once per image: the vision tensors are passed once per example. transformers 5 takes
an already built 4-D mask as it is (``masking_utils._preprocess_mask_arguments``), and explicit
``position_ids``; the mask is built here per attention backend (:func:`attn_backend`):

- ``sdpa``: a boolean ``[rows, 1, T, T]`` mask (True = attend), one example per row, rows right-padded; each
  layer's attention is split at the shortest prompt (:mod:`bpo.models.prefix_attention`), so the prompt square
  runs causal flash attention instead of a dense masked one;
- ``eager``: the same as an additive float mask;
- ``flex_attention``: a ``BlockMask`` from the same rule plus a document id, so several examples share a
  row with no padding between them (blocks across examples are skipped, not computed); the row is padded
  only to a multiple of 128 tokens to bound recompilations of the flex kernel.

Logits are computed only where they are used: the decoder's final hidden states are taken, the positions
that predict a response token are gathered, and ``lm_head`` + log-softmax run over them in chunks
(:func:`chunked_target_logps`), each chunk recomputed in the backward pass, so a ``[tokens, vocab]`` fp32
tensor is never held whole; the last decoder layer's ``o_proj`` and MLP run only on those positions
(:class:`_LastLayerRows`). Models or backends not verified here fall back to plain rows
(:class:`LogpsPath` says why, once). This replaced a two-forward path (prefix with a KV cache, then the
responses against the expanded cache) that launched about twice the kernels of plain rows.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from bpo.errors import BpoError
from bpo.models import prefix_attention
from bpo.models.encoding import EncodedExample
from bpo.models.logprobs import _to_device, cat_vision, model_device, model_dtype, scatter_rows, to_device

# Decoders with plain causal attention and 1-D RoPE: explicit positions + a custom mask are exact.
_TEXT_BACKBONES = {"llama", "mistral", "qwen2", "qwen3", "vicuna", "phi3", "granite", "olmo2"}
# Wrappers that only splice image features into the token embeddings of such a decoder.
_LLAVA_FAMILY = {"llava", "llava_next", "llava_onevision", "vipllava"}
# M-RoPE: 3-D positions from get_rope_index, text continues at index + rope_delta.
_MROPE = {"qwen2_vl", "qwen2_5_vl"}
# Backends that take a custom 4-D mask (tensor or BlockMask) as given.
_MASK_BACKENDS = {"sdpa", "eager", "flex_attention"}
# Families whose attention is not plain causal text attention; they use plain rows until the mask covers them.
_OWN_MASK_RULES = {"gemma3": "bidirectional attention within each image and sliding-window layers",
                   "mllama": "cross-attention to the image", "idefics2": "perceiver-resampled images",
                   "paligemma": "a bidirectional prefix"}
FLEX_BLOCK = 128


def hf_model(model):
    """The transformers model under DDP / torch.compile / peft wrappers."""
    for _ in range(4):
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            break
    return model


def attn_backend(base) -> str:
    config = base.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    impl = getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)
    return impl if isinstance(impl, str) else "eager"


def unsupported_reason(model) -> str | None:
    """Why the packed path cannot be used for ``model``, or None if it can."""
    base = hf_model(model)
    config = getattr(base, "config", None)
    kind = getattr(config, "model_type", None)
    if kind in _MROPE:
        if _rope_index_fn(base) is None:
            return f"{kind}: no get_rope_index found"
    elif kind in _LLAVA_FAMILY:
        text_kind = getattr(getattr(config, "text_config", None), "model_type", None)
        if text_kind not in _TEXT_BACKBONES:
            return f"{kind} with a {text_kind!r} language model is not verified for packed responses"
    elif kind in _OWN_MASK_RULES:
        return f"{kind}: {_OWN_MASK_RULES[kind]}; the packed mask does not reproduce them yet"
    elif kind not in _TEXT_BACKBONES:
        return f"model type {kind!r} is not verified for packed responses"
    sliding = _sliding_window(config)
    if sliding:
        return f"sliding-window attention ({sliding}) is not in the packed mask"
    backend = attn_backend(base)
    if backend not in _MASK_BACKENDS:
        return f"attention backend {backend!r} takes no custom mask (use sdpa or flex_attention)"
    if base.get_output_embeddings() is None:
        return "no lm_head (get_output_embeddings) to score response positions with"
    return None


def _sliding_window(config) -> str | None:
    """Whether the language model has sliding-window layers (the custom mask would silently drop them)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None) or []
    window = getattr(text, "sliding_window", None)
    if "sliding_attention" in types:
        return f"window {window}"
    if getattr(text, "model_type", None) == "mistral" and window is not None:
        return f"window {window}"
    return None


def _rope_index_fn(base):
    for mod in (getattr(base, "model", None), base):
        fn = getattr(mod, "get_rope_index", None)
        if callable(fn):
            return fn
    return None


@dataclass
class PackedBatch:
    """Examples laid out as ``[prompt | r_0 | ... | r_K]``, one or several per row."""

    inputs: dict  # input_ids [N, T], per-token extras [N, T], vision tensors (in row order)
    doc: torch.Tensor  # [N, T] example (pack order) of each token, -1 on padding
    seg: torch.Tensor  # [N, T] 0 = prompt, k + 1 = response k, -1 = padding
    pos: torch.Tensor  # [N, T] 1-D position (prompt index, or P + j in a response)
    src: torch.Tensor  # [M] flat index (row * T + t) of the hidden state that predicts each response token
    tgt: torch.Tensor  # [M] that response token
    owner: torch.Tensor  # [M] response row (0..R-1) of each target
    example_index: torch.Tensor  # [R] original example index of each response row
    response_index: torch.Tensor  # [R] 0 = chosen, k = k-th rejected
    prompt: dict  # right-padded prompts in pack order (input_ids, attention_mask, extras) for get_rope_index
    prompt_flat: torch.Tensor  # flat indices of prompt tokens in the packed rows ...
    prompt_src: torch.Tensor  # ... and the matching flat indices into the padded prompt batch
    pad_tokens: int
    real_tokens: int
    # S: with one example per row, every row's first S tokens are its prompt's, attending only causally among
    # themselves (0 when rows hold several examples); SDPA then splits there (bpo.models.prefix_attention)
    shared_prefix: int = 0
    # per (device, dtype, backend): the inputs on the device, positions and mask, built once and used by both
    # passes of a step (policy and reference), and the image features shared between them (vision_share)
    device_cache: dict = field(default_factory=dict, repr=False)


def _rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Which examples share a row: one per row, or first-fit decreasing into rows of ``capacity`` tokens."""
    if capacity is None:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max(capacity, lengths[i]) - lengths[i])
    return [sorted(r) for r in rows]


def packed_length(ex: EncodedExample) -> int:
    """Tokens of an example laid out once: the prompt plus every response."""
    return len(ex.prompt_ids) + sum(map(len, ex.response_ids))


def _prompt_batch(examples: list[EncodedExample], pad_id: int, keys: list[str], width: int) -> dict:
    """The prompts alone, right-padded: what ``get_rope_index`` reads for M-RoPE positions."""
    prompt = {"input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
              "attention_mask": torch.zeros((len(examples), width), dtype=torch.long)}
    for k in keys:
        prompt[k] = torch.zeros((len(examples), width), dtype=torch.long)
    for e, ex in enumerate(examples):
        p = len(ex.prompt_ids)
        prompt["input_ids"][e, :p] = torch.tensor(ex.prompt_ids)
        prompt["attention_mask"][e, :p] = 1
        for k in keys:
            prompt[k][e, :p] = torch.tensor(ex.token_extras[k])
    return prompt


def collate_packed(examples: list[EncodedExample], pad_id: int, capacity: int | None = None,
                   multiple_of: int = 1) -> PackedBatch:
    """Lay ``examples`` out in rows; ``capacity`` None = one example per row (padding), else packed rows."""
    lengths = [packed_length(ex) for ex in examples]
    rows = _rows(lengths, capacity)
    order = [i for r in rows for i in r]  # pack order: vision tensors and prompts follow it
    width = max(sum(lengths[i] for i in r) for r in rows)
    width = -(-width // multiple_of) * multiple_of
    keys = list(examples[0].token_extras)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    doc = torch.full((n, width), -1, dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    extras = {k: torch.zeros((n, width), dtype=torch.long) for k in keys}
    src, tgt, owner, ex_idx, resp_idx, p_flat, p_src = [], [], [], [], [], [], []
    p_max = max(len(examples[i].prompt_ids) for i in order)
    slot = 0
    for r, members in enumerate(rows):
        t = 0
        for i in members:
            ex, e = examples[i], order.index(i)
            p = len(ex.prompt_ids)
            ids[r, t:t + p] = torch.tensor(ex.prompt_ids)
            doc[r, t:t + p], seg[r, t:t + p], pos[r, t:t + p] = e, 0, torch.arange(p)
            for k in keys:
                extras[k][r, t:t + p] = torch.tensor(ex.token_extras[k])
            p_flat.append(torch.arange(r * width + t, r * width + t + p))
            p_src.append(torch.arange(e * p_max, e * p_max + p))
            last_prompt = r * width + t + p - 1
            t += p
            for k, resp in enumerate(ex.response_ids):
                m = len(resp)
                ids[r, t:t + m] = torch.tensor(resp, dtype=torch.long)
                doc[r, t:t + m], seg[r, t:t + m], pos[r, t:t + m] = e, k + 1, p + torch.arange(m)
                # token j of the response is predicted by token j - 1 of it, token 0 by the last prompt token
                src.extend([last_prompt] + list(range(r * width + t, r * width + t + m - 1)) if m else [])
                tgt.extend(resp)
                owner.extend([slot] * m)
                ex_idx.append(i)
                resp_idx.append(k)
                slot += 1
                t += m
    prompt = _prompt_batch([examples[i] for i in order], pad_id, keys, p_max)
    inputs = {"input_ids": ids, **extras}
    vision = [examples[i].vision for i in order if examples[i].vision]
    if vision:
        vis = cat_vision(vision)
        inputs.update(vis)
        prompt.update(vis)
    real = sum(lengths)
    shared = min(len(ex.prompt_ids) for ex in examples) if all(len(r) == 1 for r in rows) else 0
    return PackedBatch(inputs=inputs, doc=doc, seg=seg, pos=pos, src=torch.tensor(src, dtype=torch.long),
                       tgt=torch.tensor(tgt, dtype=torch.long), owner=torch.tensor(owner, dtype=torch.long),
                       example_index=torch.tensor(ex_idx), response_index=torch.tensor(resp_idx), prompt=prompt,
                       prompt_flat=torch.cat(p_flat), prompt_src=torch.cat(p_src), pad_tokens=n * width - real,
                       real_tokens=real, shared_prefix=shared)


def dense_mask(doc: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """``[N, 1, T, T]`` bool, True where query ``q`` may attend to key ``k``.

    Same example, causal, and the key is a prompt token or in the query's own response. Padding tokens see
    earlier padding only, so no row is fully masked (a fully masked softmax row is NaN in SDPA).
    """
    t = doc.shape[1]
    causal = torch.ones((t, t), dtype=torch.bool, device=doc.device).tril()
    same_doc = doc[:, :, None] == doc[:, None, :]
    visible = (seg[:, None, :] == 0) | (seg[:, :, None] == seg[:, None, :])
    return (same_doc & visible & causal).unsqueeze(1)


def flex_block_mask(doc: torch.Tensor, seg: torch.Tensor):
    """The rule of :func:`dense_mask` as a FlexAttention ``BlockMask`` (blocks across examples are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return (doc[b, q] == doc[b, k]) & (k <= q) & ((seg[b, k] == 0) | (seg[b, q] == seg[b, k]))

    n, t = doc.shape
    return create_block_mask(mask_mod, B=n, H=None, Q_LEN=t, KV_LEN=t, device=doc.device)


def attention_mask_for(backend: str, doc: torch.Tensor, seg: torch.Tensor, dtype, *, additive: bool = False):
    """The mask for ``backend``. ``additive`` (SDPA): a float mask of 0 / -inf in ``dtype`` (the queries' dtype),
    which SDPA adds as it is; a boolean one it converts to exactly that in every layer of every pass."""
    if backend == "flex_attention":
        return flex_block_mask(doc, seg)
    mask = dense_mask(doc, seg)
    if backend == "eager":  # eager adds the mask to the scores
        dtype = dtype if dtype is not None and dtype.is_floating_point else torch.float32
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    if additive and dtype is not None and dtype.is_floating_point:  # no fully masked row: -inf gives no NaN
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask


def _mrope_positions(base, batch: PackedBatch, prompt: dict, doc, pos):
    """``[3, N, T]``: the prompt's 3-D positions from the model's own code, responses at ``P + j + delta``."""
    n_ex = prompt["input_ids"].shape[0]
    deltas = torch.zeros((n_ex,), dtype=torch.long, device=pos.device)
    prompt_pos = None
    if prompt.get("image_grid_thw") is not None or prompt.get("video_grid_thw") is not None:
        fn = _rope_index_fn(base)
        params = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in prompt.items() if k in params and k != "input_ids"}
        prompt_pos, d = fn(prompt["input_ids"], **kwargs)
        deltas = d.reshape(n_ex).to(pos.device)
    out = (pos + deltas[doc.clamp(min=0)]).unsqueeze(0).repeat(3, 1, 1)
    if prompt_pos is not None:
        flat = out.view(3, -1)
        flat[:, batch.prompt_flat.to(pos.device)] = prompt_pos.reshape(3, -1)[:, batch.prompt_src.to(pos.device)]
    return out


def _chunk_logps(hidden, targets, head, softcap):
    # in the head's dtype: outside autocast (the reference pass) a bf16 head cannot take fp32 input
    logits = head(hidden.to(head.weight.dtype)).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    # gather - logsumexp: no log-softmax output of the chunk's full width is kept
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def chunked_target_logps(hidden: torch.Tensor, targets: torch.Tensor, head, *, chunk: int | None = None,
                         softcap: float | None = None) -> torch.Tensor:
    """log p(target) for ``hidden [M, H]``, ``chunk`` rows at a time; with grad, each chunk is recomputed in
    the backward pass (activation checkpointing), so only one chunk's ``[chunk, vocab]`` logits live at once."""
    # ZeRO-3 partitions the head's weight (shape 0 outside its forward); ds_shape keeps the real one. The head
    # is called as a module below, so the engine's pre-forward hook gathers it, in the backward recompute too.
    vocab = getattr(head.weight, "ds_shape", head.weight.shape)[0]
    chunk = chunk or max(64, (32 << 20) // (4 * vocab))  # ~32 MiB of fp32 logits per chunk
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    # ZeRO-3 re-partitions the head between forward and backward, so a recompute sees other tensor metadata and
    # torch.utils.checkpoint refuses it: there the chunks keep their logits for the backward (more memory).
    recompute = grad and not hasattr(head.weight, "ds_id")
    out = []
    # split, not slicing: the backward of a slice allocates a zero gradient of the whole [M, H] per chunk
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        if recompute:
            out.append(checkpoint(_chunk_logps, h, t, head, softcap, use_reentrant=False))
        else:
            out.append(_chunk_logps(h, t, head, softcap))
    return torch.cat(out) if out else hidden.new_zeros((0,), dtype=torch.float32)


class _GrabHidden:
    """A forward hook on the decoder that keeps its ``last_hidden_state`` while ``on``.

    Registered once per decoder (a new hook per call would make ``torch.compile`` recompile), and only
    armed around the packed forward, so plain-row forwards keep no extra reference. The model's own
    outputs are not used for this: accelerate's mixed-precision wrapper converts every output tensor to
    fp32, ``hidden_states`` of all layers included, which would cost a copy of each layer's activations.
    """

    def __init__(self):
        self.on, self.value = False, None

    def __call__(self, module, args, output):
        if self.on:
            self.value = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


class _LastLayerRows:
    """Hooks on the last decoder layer's ``o_proj`` and MLP that run them only on the rows that are used.

    Only the final hidden states at positions that predict a response token are read (``src``); every other
    row of the last layer's output goes nowhere. Its keys and values (``k_proj``, ``v_proj``) and its
    queries are still computed for every position, but ``o_proj`` and the MLP act row by row, so while
    armed a pre-hook hands them the used rows only and a forward hook puts their output back in place
    (zeros elsewhere). The used rows are exact, values and gradients; at LLaVA-1.5's proportions (a
    ~600-token prompt) about two thirds of the last layer's MLP work is skipped. Registered once per
    decoder, armed around the packed forward only; not used under gradient checkpointing (the recomputed
    layer would run unarmed) or ``torch.compile``.
    """

    def __init__(self, layer, modules):
        self.layer = layer
        self.rows: torch.Tensor | None = None
        self._shape: dict[int, torch.Size] = {}
        for m in modules:
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post)

    def _pre(self, module, args):
        if self.rows is None or not args:
            return None
        x = args[0]
        self._shape[id(module)] = x.shape
        # .to: a no-op unless the layer sits on another device than the inputs (a device_map split)
        return (x.reshape(-1, x.shape[-1]).index_select(0, self.rows.to(x.device)), *args[1:])

    def _post(self, module, args, output):
        shape = self._shape.pop(id(module), None)
        if self.rows is None or shape is None:
            return None
        rows = self.rows.to(output.device)
        full = output.new_zeros((shape[:-1].numel(), output.shape[-1])).index_copy(0, rows, output)
        return full.view(*shape[:-1], output.shape[-1])

    def disarm(self) -> None:
        self.rows = None
        self._shape.clear()

    def checkpointed(self) -> bool:
        """Whether the layer is recomputed in the backward: transformers' activation checkpointing (a flag on the
        layer, read per call since it can be switched on later) or a torch checkpoint wrapper around it."""
        return bool(getattr(self.layer, "gradient_checkpointing", False)) or \
            hasattr(self.layer, "_checkpoint_wrapped_module")

    @staticmethod
    def for_decoder(decoder) -> _LastLayerRows | None:
        hooks = getattr(decoder, "_bpo_last_rows", False)
        if hooks is False:
            layers = getattr(decoder, "layers", None)
            last = layers[-1] if layers is not None and len(layers) else None
            o_proj = getattr(getattr(last, "self_attn", None), "o_proj", None)
            mlp = getattr(last, "mlp", None)
            hooks = _LastLayerRows(last, [o_proj, mlp]) if o_proj is not None and mlp is not None else None
            decoder._bpo_last_rows = hooks
        return hooks


def _final_hidden(model, base, rows: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    decoder = base.get_decoder()
    grab = getattr(decoder, "_bpo_grab_hidden", None)
    if grab is None:
        grab = _GrabHidden()
        decoder.register_forward_hook(grab)
        decoder._bpo_grab_hidden = grab
    last = None
    if rows is not None and getattr(base, "_compiled_call_impl", None) is None:
        last = _LastLayerRows.for_decoder(decoder)
        if last is not None and last.checkpointed():
            last = None
    grab.on = True
    if last is not None:
        last.rows = rows
    try:
        # logits_to_keep=1: the model's own lm_head runs on one position per row; its output is dropped
        model(**kwargs, logits_to_keep=1, use_cache=False)
        hidden = grab.value
    finally:
        grab.on, grab.value = False, None
        if last is not None:
            last.disarm()
    if hidden is None:
        raise RuntimeError(f"{type(decoder).__name__} returned no last_hidden_state")
    return hidden


def _device_tensors(base, batch: PackedBatch, device, dtype) -> tuple:
    """Inputs, mask, positions and targets on ``device``: built on the first pass of a step, then reused."""
    backend = attn_backend(base)
    # outside autocast the queries are in the token embeddings' dtype, so SDPA can take an additive mask in it;
    # under autocast (the bf16 policy pass) they may not be, and the boolean mask stays
    additive = backend == "sdpa" and not torch.is_autocast_enabled(torch.device(device).type)
    embed = base.get_input_embeddings() if additive else None
    mask_dtype = embed.weight.dtype if embed is not None and embed.weight.is_floating_point() else dtype
    key = (str(device), dtype, backend, additive)
    hit = batch.device_cache.get(key)
    if hit is not None:
        return hit
    # every host-to-device copy before the forward (a blocking copy after it would wait for the GPU)
    inputs = _to_device(batch.inputs, device, dtype)
    doc, seg, pos = (to_device(t, device) for t in (batch.doc, batch.seg, batch.pos))
    # rows: the hidden states that are read (every response shares its prompt's last one); unique on the host,
    # where it costs no device synchronisation
    src, tgt, owner, rows = (to_device(t, device) for t in (batch.src, batch.tgt, batch.owner,
                                                            torch.unique(batch.src)))
    if getattr(base.config, "model_type", None) in _MROPE:
        prompt = _to_device(batch.prompt, device, dtype)
        position_ids = _mrope_positions(base, batch, prompt, doc, pos)
    else:
        position_ids = pos
    mask = attention_mask_for(backend, doc, seg, mask_dtype, additive=additive)
    extra = {}
    if backend == "sdpa" and batch.shared_prefix and prefix_attention.install():
        split = prefix_attention.prefix_split(mask, batch.shared_prefix)
        if split is not None:
            extra[prefix_attention.KWARG] = split
    batch.device_cache[key] = out = (inputs, mask, position_ids, src, tgt, owner, extra, rows)
    return out


def packed_row_logps(model, batch: PackedBatch, *, chunk: int | None = None,
                     share_vision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each response and its token count: ``([R], [R])``, like ``row_logps``.

    ``share_vision`` (a mode from :func:`bpo.models.vision_share.share_reason`): image features computed by
    the first pass over ``batch`` are reused by later ones (the reference pass after the policy pass)."""
    from bpo.models.vision_share import shared_inputs

    device, dtype = model_device(model), model_dtype(model)
    base = hf_model(model)
    inputs, mask, position_ids, src, tgt, owner, extra, rows = _device_tensors(base, batch, device, dtype)
    inputs, vision_ctx = shared_inputs(base, inputs, batch.device_cache, share_vision)
    if extra and getattr(base, "_bpo_no_prefix_kwarg", False):
        extra = {}
    with vision_ctx:
        try:
            hidden = _final_hidden(model, base, rows, **inputs, **extra, attention_mask=mask,
                                   position_ids=position_ids)
        except TypeError as e:
            # a module on the way (a vision tower of a family not verified here) that takes no extra keywords:
            # the dense mask alone is exact, so run without the split from now on
            if not extra or prefix_attention.KWARG not in str(e):
                raise
            base._bpo_no_prefix_kwarg = True
            hidden = _final_hidden(model, base, rows, **inputs, attention_mask=mask, position_ids=position_ids)
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, src)
    softcap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
    lp = chunked_target_logps(picked, tgt, base.get_output_embeddings(), chunk=chunk, softcap=softcap)
    n_rows = batch.example_index.shape[0]
    # fp64 sums rounded once, as in row_logps (the order of fp32 additions would differ between the paths)
    sums = torch.zeros((n_rows,), dtype=torch.float64, device=lp.device).index_add(0, owner, lp.double()).float()
    counts = torch.zeros((n_rows,), dtype=torch.long, device=lp.device).index_add(0, owner, torch.ones_like(owner))
    return sums, counts


class StepBatch:
    """The last :class:`PackedBatch` and what it was built from: the policy and the reference pass of a step
    score the same examples, so the second pass reuses the layout, its device tensors and image features."""

    def __init__(self):
        self.examples: tuple = ()
        self.key: tuple | None = None
        self.batch: PackedBatch | None = None

    def get(self, examples: list[EncodedExample], pad_id: int, pack: bool) -> PackedBatch:
        same = len(examples) == len(self.examples) and all(a is b for a, b in zip(examples, self.examples))
        if not (same and self.key == (pad_id, pack)):  # identity: an EncodedExample is not edited in place
            self.batch = _collate(examples, pad_id, pack)
            self.examples, self.key = tuple(examples), (pad_id, pack)
        return self.batch


def _collate(examples: list[EncodedExample], pad_id: int, pack: bool) -> PackedBatch:
    if pack:
        return collate_packed(examples, pad_id, capacity=sum(map(packed_length, examples)), multiple_of=FLEX_BLOCK)
    return collate_packed(examples, pad_id)


def packed_example_logps(model, examples: list[EncodedExample], pad_id: int, *, pack: bool | None = None,
                         chunk: int | None = None, stats: dict | None = None, reuse: StepBatch | None = None,
                         share_vision: str | None = None):
    """Drop-in for :func:`bpo.models.logprobs.example_logps`: ``logps, counts, valid`` of shape [B, 1+Kmax].

    ``pack`` (default: only with flex_attention) puts all examples in one row with a document mask; with a
    dense mask that would cost (sum of lengths)^2 attention, so SDPA/eager get one example per row.
    ``reuse``: keep the batch for the next call on the same examples; ``share_vision``: see packed_row_logps.
    """
    if pack is None:
        pack = attn_backend(hf_model(model)) == "flex_attention"
    batch = reuse.get(examples, pad_id, pack) if reuse is not None else _collate(examples, pad_id, pack)
    if stats is not None:
        stats["pad_tokens"] = stats.get("pad_tokens", 0) + batch.pad_tokens
        stats["real_tokens"] = stats.get("real_tokens", 0) + batch.real_tokens
    lp, n = packed_row_logps(model, batch, chunk=chunk, share_vision=share_vision)
    return scatter_rows(lp, n, batch, len(examples))


def _plain_pad_tokens(examples: list[EncodedExample]) -> tuple[int, int]:
    rows = [len(ex.prompt_ids) + len(r) for ex in examples for r in ex.response_ids]
    return len(rows) * max(rows) - sum(rows), sum(rows)


class LogpsPath:
    """Packed or plain-row log-probs per ``run.fast_path``; says once why it fell back.

    ``auto``: packed where :func:`unsupported_reason` allows, plain rows otherwise (one log line per reason);
    ``packed`` (``shared``, its older name): an error where unsupported; ``plain``: one row per response, the
    peers' layout and the reference every fast path is tested against.
    """

    def __init__(self, mode: str = "auto", log=print):
        if mode not in ("auto", "packed", "shared", "plain"):
            raise BpoError(f"run.fast_path must be auto, packed or plain, not {mode!r}")
        self.mode = "packed" if mode == "shared" else mode
        self.log = log
        self._said: set[str] = set()
        self._step = StepBatch()  # policy and reference pass of one step: one layout, one vision pass
        self._vision: dict[int, str | None] = {}  # id(model) -> sharing mode, decided once per model

    def __call__(self, model, examples: list[EncodedExample], pad_id: int, stats=None):
        from bpo.models.logprobs import example_logps

        if self.mode != "plain":
            reason = unsupported_reason(model)
            if reason is None:
                tokens: dict = {}
                out = packed_example_logps(model, examples, pad_id, stats=tokens, reuse=self._step,
                                           share_vision=self._share_mode(model, examples))
                self._record(stats, tokens["pad_tokens"], tokens["real_tokens"])
                return out
            if self.mode == "packed":
                raise BpoError(f"run.fast_path=packed is not supported here: {reason}; use run.fast_path=auto "
                               "or plain")
            if reason not in self._said:
                self._said.add(reason)
                self.log(f"fast path off ({reason}): scoring each response with its own copy of the prompt")
        self._record(stats, *_plain_pad_tokens(examples))
        return example_logps(model, examples, pad_id)

    def _share_mode(self, model, examples) -> str | None:
        """How the image features are shared between the passes of a step; one log line when they are not."""
        from bpo.models.vision_share import share_reason

        if not any(ex.vision for ex in examples):
            return None
        base = hf_model(model)
        if id(base) not in self._vision:
            mode, reason = share_reason(base)
            self._vision[id(base)] = mode
            if reason is not None:
                self.log(f"image features computed in every pass ({reason})")
        return self._vision[id(base)]

    @staticmethod
    def _record(stats, pad: int, real: int) -> None:
        if stats is not None:  # per forward of the policy pass, averaged over a logged step's micro-batches
            stats.add("tokens/pad", torch.tensor([float(pad)]))
            stats.add("tokens/pad_fraction", torch.tensor([pad / max(1, pad + real)]))


def compile_model(model, *, dynamic: bool = True, backend: str = "inductor", log=print):
    """``torch.compile`` the transformers model's forward in place (``nn.Module.compile``).

    In place, so parameter names, ``state_dict`` keys, peft's adapter switch and DDP wrapping stay as they
    are; peft's LoRA layers inside are traced with the rest. Returns the compiled module.
    """
    base = hf_model(model)
    base.compile(dynamic=dynamic, backend=backend)
    log(f"run.compile: torch.compile({type(base).__name__}, backend={backend!r}, dynamic={dynamic})")
    return base

"""Summed response log-probabilities for (prompt, images, response) batches: the plain path.

Every (example, response) pair becomes one row ``prompt + response`` (right-padded), with the
example's vision tensors repeated per row, as TRL and every other peer do. The fast shared-prefix
path (``bpo.models.packed``) must match this one; tests compare them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bpo.models.encoding import EncodedExample


@dataclass
class RowBatch:
    """Rows of ``prompt + response`` and where each row's response sits."""

    inputs: dict  # input_ids, attention_mask, vision tensors, per-token extras
    response_mask: torch.Tensor  # [R, L] True where the *target* token is a response token
    example_index: torch.Tensor  # [R] which example each row belongs to
    response_index: torch.Tensor  # [R] 0 = chosen, k = k-th rejected
    first_response_pos: int  # smallest prompt length: logits before it are never needed


def _pad_to(t: torch.Tensor, size: list[int]) -> torch.Tensor:
    pad = []
    for d in reversed(range(1, t.dim())):
        pad += [0, size[d - 1] - t.shape[d]]
    return torch.nn.functional.pad(t, pad)


def cat_vision(parts: list[dict]) -> dict:
    out = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if tensors[0].dim() >= 4 and len({t.shape[1:] for t in tensors}) > 1:
            # Per-image crops/tiles: LLaVA-NeXT [n_img, n_patches, 3, H, W] with n_patches varying per image;
            # Idefics3 pixel_values and pixel_attention_mask with varying tile counts and sizes. Zero padding
            # is what the processors themselves pad a batch with (all-zero tiles and mask = padding).
            size = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
            tensors = [_pad_to(t, size) for t in tensors]
        out[key] = torch.cat(tensors, dim=0)
    return out


def collate_rows(examples: list[EncodedExample], pad_id: int) -> RowBatch:
    rows, masks, ex_idx, resp_idx, vision_parts = [], [], [], [], []
    extras: dict[str, list[list[int]]] = {k: [] for k in examples[0].token_extras}
    for i, ex in enumerate(examples):
        for k, resp in enumerate(ex.response_ids):
            rows.append(ex.prompt_ids + resp)
            masks.append(len(ex.prompt_ids))
            ex_idx.append(i)
            resp_idx.append(k)
            if ex.vision:
                vision_parts.append(ex.vision)
            for key in extras:
                extras[key].append(ex.token_extras[key] + [0] * len(resp))
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    resp_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for r, (ids, n_prompt) in enumerate(zip(rows, masks)):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        resp_mask[r, n_prompt: len(ids)] = True
    inputs = {"input_ids": input_ids, "attention_mask": attention}
    for key, vals in extras.items():
        t = torch.zeros((len(rows), length), dtype=torch.long)
        for r, v in enumerate(vals):
            t[r, : len(v)] = torch.tensor(v)
        inputs[key] = t
    if vision_parts:
        inputs.update(cat_vision(vision_parts))
    return RowBatch(inputs=inputs, response_mask=resp_mask, example_index=torch.tensor(ex_idx),
                    response_index=torch.tensor(resp_idx), first_response_pos=min(masks))


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in fp32 (bf16 log-softmax loses the small differences DPO needs)."""
    logits = logits.float()
    return torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t.to(device)``, without making the host wait for the GPU.

    A blocking host-to-CUDA copy ends in ``cudaStreamSynchronize``: the host stops until every queued
    kernel has run, so it cannot queue the next ones meanwhile. ``non_blocking`` from pageable memory is
    still safe (the driver stages the data before the call returns) and skips that wait.
    """
    return t.to(device, non_blocking=t.device.type == "cpu" and torch.device(device).type == "cuda")


def _to_device(inputs: dict, device, dtype) -> dict:
    out = {}
    for k, v in inputs.items():
        if torch.is_tensor(v):
            v = to_device(v, device)
            if v.is_floating_point() and dtype is not None:
                v = v.to(dtype)
        out[k] = v
    return out


def model_dtype(model):
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def model_device(model):
    return next(model.parameters()).device


def row_logps(model, batch: RowBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each row's response tokens and their count: ``([R], [R])``.

    Only the logits from the first response position on are materialised (``logits_to_keep``):
    prompts are long (576 image tokens for LLaVA-1.5) and their logits are never used.
    """
    inputs = _to_device(batch.inputs, model_device(model), model_dtype(model))
    length = inputs["input_ids"].shape[1]
    start = max(batch.first_response_pos - 1, 0)  # logits at t predict token t+1
    keep = length - start
    try:
        out = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = out.logits
        if logits.shape[1] != keep:
            logits = logits[:, -keep:]
    except TypeError:  # models without logits_to_keep
        logits = model(**inputs, use_cache=False).logits[:, start:]
    targets = inputs["input_ids"][:, start + 1:]
    mask = to_device(batch.response_mask, targets.device)[:, start + 1:]
    lp = token_logps(logits[:, :-1], targets)
    lp = lp.masked_fill(~mask, 0.0)
    # summed in fp64, rounded once: an fp32 running sum of ~-70 drifts by a few 1e-6 with the order of terms
    return lp.sum(-1, dtype=torch.float64).float(), mask.sum(-1)


def example_logps(model, examples: list[EncodedExample], pad_id: int):
    """Per-example matrices: ``logps [B, 1+Kmax]``, ``counts [B, 1+Kmax]`` and ``valid [B, 1+Kmax]``.

    Column 0 is the chosen response; columns 1.. the rejected ones (padded where K varies).
    """
    batch = collate_rows(examples, pad_id)
    lp, n = row_logps(model, batch)
    return scatter_rows(lp, n, batch, len(examples))


def scatter_rows(lp, n, batch: RowBatch, n_examples: int):
    width = int(batch.response_index.max().item()) + 1
    device = lp.device
    logps = torch.zeros((n_examples, width), dtype=lp.dtype, device=device)
    counts = torch.zeros((n_examples, width), dtype=torch.long, device=device)
    valid = torch.zeros((n_examples, width), dtype=torch.bool, device=device)
    ei, ri = to_device(batch.example_index, device), to_device(batch.response_index, device)
    logps = logps.index_put((ei, ri), lp)
    counts = counts.index_put((ei, ri), to_device(n, device))
    valid = valid.index_put((ei, ri), torch.ones(ei.shape, dtype=torch.bool, device=device))  # no host scalar
    return logps, counts, valid

"""Contrastive decoding that amplifies the language prior: ``(1 + a) * l_noisy - a * l_clean``.

Two branches decode the same token sequence, one conditioned on the clean image and one on the
noised image. Each branch keeps **its own KV cache** for the whole answer. This is the point of
this module: the VCD sampler that Pi et al.'s public script copied re-copied the clean branch's
``model_kwargs`` (and so its cache) into the contrastive branch at every step, so after the first
token the "noisy" logits were computed from the clean cache and the contrast collapsed to plain
sampling from the clean model (DAMO-NLP-SG/VCD issues #7 and #13). The sign is also reversed
relative to VCD: we want answers driven by the prior (the noisy branch), not suppressed by it.

Adaptive plausibility (VCD's ``cd_beta``): tokens whose *noisy* probability is below
``plausibility * max_noisy_prob`` are excluded, so the amplification cannot promote tokens neither
branch would ever say. ``plausibility = 0`` turns it off.

Both branches follow ``transformers``' own decode bookkeeping (``prepare_inputs_for_generation`` and
the model's position-id/kv update helpers), so left padding and Qwen2-VL's M-RoPE positions are
handled exactly as in ``model.generate``; a test checks that ``alpha = 0`` reproduces
``model.generate`` on the noisy input token for token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from bpo.models.generation import Encoded, Generation, HFEngine, Request, SamplingSettings, projector_hook


def combine_logits(l_noisy: torch.Tensor, l_clean: torch.Tensor, alpha: float,
                   plausibility: float = 0.0) -> torch.Tensor:
    """``(1 + alpha) * log p_noisy - alpha * log p_clean`` with the plausibility cut on ``p_noisy``.

    Log-probabilities and raw logits give the same argmax and softmax (they differ by a per-row
    constant); log-probabilities keep the values comparable across steps.
    """
    logp_noisy = torch.log_softmax(l_noisy.float(), dim=-1)
    logp_clean = torch.log_softmax(l_clean.float(), dim=-1)
    out = (1 + alpha) * logp_noisy - alpha * logp_clean
    if plausibility > 0:
        cutoff = math.log(plausibility) + logp_noisy.max(dim=-1, keepdim=True).values
        out = out.masked_fill(logp_noisy < cutoff, float("-inf"))
    return out


class Branch:
    """One conditioning (clean or noisy) with its own KV cache, mirroring ``model.generate``'s loop."""

    def __init__(self, model, inputs: dict):
        self.model = model
        self.input_ids = inputs["input_ids"]
        self.kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
        self.kwargs["use_cache"] = True
        make_pos = getattr(model, "_prepare_position_ids_for_generation", None)
        if make_pos is not None:
            # Left-padding-aware positions (3-D M-RoPE ids for Qwen2-VL), as generate() builds them.
            self.kwargs["position_ids"] = make_pos(self.input_ids, {"input_ids": self.input_ids, **self.kwargs})
        self.first = True

    def next_logits(self) -> torch.Tensor:
        """Logits for the next token; the prefill on the first call, one cached step afterwards."""
        inputs = self.model.prepare_inputs_for_generation(
            self.input_ids, next_sequence_length=None if self.first else 1, is_first_iteration=self.first,
            **self.kwargs)
        out = self.model(**inputs, return_dict=True)
        self.kwargs = self.model._update_model_kwargs_for_generation(out, self.kwargs)
        self.first = False
        return out.logits[:, -1].float()

    def append(self, tokens: torch.Tensor) -> None:
        self.input_ids = torch.cat([self.input_ids, tokens[:, None].to(self.input_ids.device)], dim=-1)


def contrast_batch(engine: HFEngine, clean: Sequence[Encoded], noisy: Sequence[Encoded],
                   settings: SamplingSettings, *, alpha: float, plausibility: float,
                   _share_cache: bool = False) -> list[list[int]]:
    """Decode one batch; returns new token ids per row (end-of-turn excluded).

    ``_share_cache`` reproduces the VCD bug (the noisy branch reads the clean cache after the first
    token, so its logits equal the clean ones); it exists only so a test can show the difference.
    """
    model = engine.model
    sampler = engine.sampler(clean, settings)
    eos = torch.tensor(engine.eos_ids)
    with torch.inference_mode():
        clean_branch = Branch(model, engine.collate(clean))
        noisy_branch = Branch(model, engine.collate(noisy))
        l_clean = clean_branch.next_logits()
        with projector_hook(model, noisy, engine.encoder.image_token_ids):
            l_noisy = noisy_branch.next_logits()
        n = l_clean.shape[0]
        finished = torch.zeros(n, dtype=torch.bool)
        generated: list[list[int]] = [[] for _ in range(n)]
        for step in range(settings.max_new_tokens):
            scores = combine_logits(l_noisy, l_clean, alpha, plausibility).cpu()
            if step < settings.min_new_tokens:
                scores[:, engine.eos_ids] = float("-inf")
            if sampler is not None:
                scores = sampler(None, scores)
            tokens = scores.argmax(dim=-1)
            tokens = torch.where(finished, torch.full_like(tokens, engine.pad_id), tokens)
            for i in range(n):
                if not finished[i]:
                    generated[i].append(int(tokens[i]))
            finished |= torch.isin(tokens, eos)
            if bool(finished.all()) or step == settings.max_new_tokens - 1:
                break
            clean_branch.append(tokens)
            l_clean = clean_branch.next_logits()
            if _share_cache:
                l_noisy = l_clean
            else:
                noisy_branch.append(tokens)
                l_noisy = noisy_branch.next_logits()
    return [engine.strip_eos(g) for g in generated]


def contrast_generate(engine: HFEngine, requests: Sequence[Request], settings: SamplingSettings, *,
                      alpha: float, plausibility: float = 0.1, _share_cache: bool = False) -> list[Generation]:
    """Like :meth:`HFEngine.generate`, with each request's ``vision_transform``/``feature_transform``
    applied only in the noisy branch."""

    def run(batch: list[Encoded]) -> list[list[int]]:
        clean = [engine.encode_one(Request(e.request.key, e.request.record), transform=False) for e in batch]
        return contrast_batch(engine, clean, batch, settings, alpha=alpha, plausibility=plausibility,
                              _share_cache=_share_cache)

    return engine.generate(requests, settings, batch_fn=run)

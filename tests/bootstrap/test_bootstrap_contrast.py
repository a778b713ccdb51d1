"""Contrastive decoding keeps one KV cache per branch (the VCD bug must not come back)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bpo.bootstrap.contrast import combine_logits, contrast_generate
from bpo.bootstrap.weaken import noise_vision
from bpo.models.generation import Request, SamplingSettings

STEP = 999
MAX_NEW = 8


def test_combine_logits_by_hand():
    """p_noisy = (.5, .25, .25), p_clean = (.25, .5, .25), alpha = 1:
    2 log p_n - log p_c = (2 ln .5 - ln .25, 2 ln .25 - ln .5, 2 ln .25 - ln .25) = (0, ln .125, ln .25)
    = (0, -2.0794, -1.3863): the token the noisy branch likes more than the clean one wins.
    Plausibility 0.6 keeps tokens with p_n >= 0.6 * 0.5 = 0.3: only token 0."""
    l_noisy = torch.log(torch.tensor([[0.5, 0.25, 0.25]])) + 7.0  # raw logits: any per-row offset
    l_clean = torch.log(torch.tensor([[0.25, 0.5, 0.25]])) - 3.0
    out = combine_logits(l_noisy, l_clean, alpha=1.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, math.log(0.125), math.log(0.25)]]))
    masked = combine_logits(l_noisy, l_clean, alpha=1.0, plausibility=0.6)
    assert torch.isfinite(masked).tolist() == [[True, False, False]]
    torch.testing.assert_close(combine_logits(l_noisy, l_clean, alpha=0.0), torch.log_softmax(l_noisy, -1))


def _requests(records):
    return [Request(r.id, r, vision_transform=functools.partial(noise_vision, step=STEP, seed=0, record_id=r.id))
            for r in records]


def reference_decode(engine, req: Request, alpha: float, plausibility: float) -> list[int]:
    """No KV cache at all: every step re-runs both branches on the full sequence, one record alone."""
    clean = engine.encode_one(req, transform=False)
    noisy = engine.encode_one(req)
    model, out = engine.model, []
    for _ in range(MAX_NEW):
        ids = torch.tensor([clean.prompt_ids + out])
        extras = {k: torch.tensor([v + [0] * len(out)]) for k, v in clean.extras.items()}
        with torch.no_grad():
            lc = model(input_ids=ids, **clean.vision, **extras, use_cache=False).logits[0, -1]
            ln = model(input_ids=ids, **noisy.vision, **extras, use_cache=False).logits[0, -1]
        lp_n, lp_c = torch.log_softmax(ln.float(), -1), torch.log_softmax(lc.float(), -1)
        scores = (1 + alpha) * lp_n - alpha * lp_c
        if plausibility:
            scores[lp_n < math.log(plausibility) + lp_n.max()] = float("-inf")
        tok = int(scores.argmax())
        if tok in engine.eos_ids:
            break
        out.append(tok)
    return out


@pytest.mark.parametrize("which,alpha,plausibility", [("llava", 1.0, 0.0), ("qwen", 2.0, 0.1)])
def test_two_caches_match_no_cache_reference_and_differ_from_shared_cache(which, alpha, plausibility,
                                                                          llava_engine, qwen_engine, records):
    engine = llava_engine if which == "llava" else qwen_engine
    settings = SamplingSettings(max_new_tokens=MAX_NEW)
    reqs = _requests(records)
    got = contrast_generate(engine, reqs, settings, alpha=alpha, plausibility=plausibility)
    expected = [engine.decode(reference_decode(engine, r, alpha, plausibility), settings) for r in reqs]
    assert [g.text for g in got] == expected
    buggy = contrast_generate(engine, reqs, settings, alpha=alpha, plausibility=plausibility, _share_cache=True)
    assert [g.text for g in buggy] != expected


@pytest.mark.parametrize("which", ["llava", "qwen"])
def test_alpha_zero_is_generate_on_the_noisy_image(which, llava_engine, qwen_engine, records):
    """With alpha = 0 the custom loop must be token-for-token ``model.generate`` on the noisy input."""
    engine = llava_engine if which == "llava" else qwen_engine
    settings = SamplingSettings(max_new_tokens=MAX_NEW)
    reqs = _requests(records)
    contrast = contrast_generate(engine, reqs, settings, alpha=0.0, plausibility=0.0)
    plain = engine.generate(reqs, settings)
    assert [g.text for g in contrast] == [g.text for g in plain]
    assert [g.n_tokens for g in contrast] == [g.n_tokens for g in plain]


def test_contrast_sampling_is_seeded_per_record(llava_engine, records):
    s = SamplingSettings(max_new_tokens=6, temperature=1.0, top_p=0.95, seed=1)
    a = contrast_generate(llava_engine, _requests(records), s, alpha=1.0)
    llava_engine.batch_size = 1
    try:
        b = contrast_generate(llava_engine, _requests(records[::-1]), s, alpha=1.0)[::-1]
    finally:
        llava_engine.batch_size = 8
    assert [g.text for g in a] == [g.text for g in b]

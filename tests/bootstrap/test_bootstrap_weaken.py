"""The diffusion schedule, the noising of pixels and features, and the weaken generator."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from bpo.bootstrap.weaken import (
    WeakenGenerator,
    add_noise,
    alpha_bar,
    beta_schedule,
    noise_coefficients,
    noise_features,
    noise_vision,
    parse_steps,
)
from bpo.errors import BpoError
from bpo.models.generation import Request, SamplingSettings, projector_hook


def test_schedule_values_by_hand():
    """beta_t = sigmoid(x_t) * (5e-3 - 1e-5) + 1e-5 with x_t = -6 + 12 t / 999.

    Step 0: sigmoid(-6) = 1 / (1 + e^6) = 1 / 404.4288 = 0.00247262, so
        beta_0 = 0.00247262 * 0.00499 + 1e-5 = 1.23384e-5 + 1e-5 = 2.23384e-5,  abar_0 = 1 - beta_0.
    Last step: beta_999 = sigmoid(6) * 0.00499 + 1e-5 = 0.99752738 * 0.00499 + 1e-5 = 0.00498766.
    abar_t = exp(sum_s log(1 - beta_s)) ~= exp(-sum beta - sum beta^2 / 2).
    t = 999: the grid is symmetric and sigmoid(x) + sigmoid(-x) = 1, so sum sigmoid = 500 and
        sum beta = 500 * 0.00499 + 1000 * 1e-5 = 2.505. sum sigmoid^2 ~= (999/12) * int_{-6}^{6} sigmoid^2
        = 83.25 * (6 - (sigmoid(6) - sigmoid(-6))) = 83.25 * 5.00495 = 416.7, so sum beta^2 / 2 ~=
        0.00499^2 * 416.7 / 2 = 0.00519. log abar_999 ~= -2.5102 -> abar = 0.08124, sqrt = 0.2850.
    t = 500: x_500 = 0.006. sum_{s<=500} sigmoid ~= 83.25 * (ln(1 + e^0.006) - ln(1 + e^-6))
        + (sigmoid(-6) + sigmoid(0.006)) / 2 = 83.25 * (0.696152 - 0.002476) + 0.25199 = 58.0006;
        sum beta = 0.00499 * 58.0006 + 501e-5 = 0.294433; sum beta^2 / 2 ~= 0.0002.
        log abar_500 ~= -0.29463 -> abar = 0.74477, sqrt = 0.8630 (so step 500 keeps 86% signal,
        step 999 only 28.5%).
    """
    beta = beta_schedule()
    assert beta.shape == (1000,)
    assert beta[0].item() == pytest.approx(2.23384e-5, rel=1e-4)
    assert beta[-1].item() == pytest.approx(0.00498766, rel=1e-5)
    abar = alpha_bar()
    assert abar[0].item() == pytest.approx(1 - 2.23384e-5, abs=1e-9)
    assert math.sqrt(abar[500]) == pytest.approx(0.8630, abs=5e-4)
    assert math.sqrt(abar[999]) == pytest.approx(0.2850, abs=5e-4)
    signal, noise = noise_coefficients(999)
    assert signal**2 + noise**2 == pytest.approx(1.0)
    assert torch.all(abar[1:] < abar[:-1])  # strictly more noise at every step


def test_step_zero_leaves_pixels_almost_unchanged():
    """At t=0: x_0' = 0.99998883 x + 0.00472635 eps (sqrt(2.23384e-5) = 0.00472635).

    So |x' - x| <= 1.117e-5 * |x| + 0.00472635 * |eps|. Over 3*32*32 = 3072 values |eps| < 6
    (P(|eps| > 6) ~ 2e-9 each), so the exact tolerance used is 1.2e-5 * max|x| + 6 * 0.00472635
    = 0.0284 for normalised pixels with |x| <= 3; the empirical std of the difference must be
    0.00473 within 10%.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=gen) * 4 - 2
    xt = add_noise(x, 0, torch.Generator().manual_seed(1))
    diff = xt - x
    assert diff.abs().max().item() <= 1.2e-5 * 3 + 6 * 0.00472635
    assert diff.std().item() == pytest.approx(0.00472635, rel=0.1)
    far = add_noise(x, 999, torch.Generator().manual_seed(1))
    assert (far - x).std().item() > 0.5  # step 999 is mostly noise


def test_noise_is_seeded_per_seed_record_and_step():
    vision = {"pixel_values": torch.zeros(1, 3, 8, 8), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    a = noise_vision(vision, step=500, seed=0, record_id="r0")
    b = noise_vision(vision, step=500, seed=0, record_id="r0")
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["image_grid_thw"], vision["image_grid_thw"])  # only pixels are noised
    for other in (dict(step=900, seed=0, record_id="r0"), dict(step=500, seed=1, record_id="r0"),
                  dict(step=500, seed=0, record_id="r1")):
        assert not torch.equal(noise_vision(vision, **other)["pixel_values"], a["pixel_values"])
    assert torch.equal(vision["pixel_values"], torch.zeros(1, 3, 8, 8))  # input not modified in place


def test_parse_steps():
    assert parse_steps("300,500,900") == [300, 500, 900]
    for bad in ("", "1000", "-1", "500,500"):
        with pytest.raises(BpoError):
            parse_steps(bad)


@pytest.mark.parametrize("which", ["llava", "qwen"])
def test_feature_noise_reaches_only_its_record(which, llava_engine, qwen_engine, records):
    """The projector hook noises request i's rows only; rows of requests without a transform are kept."""
    engine = llava_engine if which == "llava" else qwen_engine
    reqs = [Request("a", records[0], feature_transform=lambda f: noise_features(f, step=999, seed=0,
                                                                                record_id="r0")),
            Request("b", records[1])]
    encoded, failed = engine.encode(reqs)
    assert not failed
    from bpo.models.generation import find_projector

    projector = find_projector(engine.model)
    inputs = engine.collate(encoded)

    def projected(noised: bool) -> torch.Tensor:
        rows = []
        with torch.no_grad(), projector_hook(engine.model, encoded) if noised else contextlib.nullcontext():
            # Registered after the noise hook, so it sees the (possibly) noised output.
            h = projector.register_forward_hook(lambda m, i, o: rows.append(o.reshape(-1, o.shape[-1])))
            try:
                engine.model(**inputs)
            finally:
                h.remove()
        return rows[0]

    clean, noisy = projected(False), projected(True)
    n0 = encoded[0].n_image_tokens
    assert n0 > 0 and clean.shape[0] == n0 + encoded[1].n_image_tokens
    assert not torch.allclose(noisy[:n0], clean[:n0])
    assert torch.equal(noisy[n0:], clean[n0:])


def test_weaken_generator_one_negative_per_step(llava_engine, records):
    gen = WeakenGenerator(llava_engine, SamplingSettings(max_new_tokens=4, temperature=1.0, top_p=0.9),
                          model="tiny", steps="300,900")
    outcomes = gen.process(records[:2])
    assert [o.id for o in outcomes] == ["r0", "r1"]
    for o in outcomes:
        assert o.error is None
        negs = o.row["rejected"]
        assert [n["meta"]["step"] for n in negs] == [300, 900]
        assert all(n["source"] == "weakened" and n["meta"]["mode"] == "sample" for n in negs)
        assert negs[0]["meta"]["temperature"] == 1.0 and negs[0]["meta"]["seed"] == 0
    assert gen.fingerprint()["steps"] == [300, 900]


def test_weaken_refuses_text_only_records_and_bad_options(llava_engine):
    from bpo.data.records import Record

    rec = Record.from_dict({"id": "t", "prompt": "hello", "chosen": "hi"})
    out = WeakenGenerator(llava_engine, SamplingSettings(max_new_tokens=2), model="tiny").process([rec])
    assert out[0].error is not None and "no image" in str(out[0].error)
    with pytest.raises(BpoError):
        WeakenGenerator(llava_engine, SamplingSettings(), model="tiny", mode="reverse")
    with pytest.raises(BpoError):
        WeakenGenerator(llava_engine, SamplingSettings(), model="tiny", noise_target="latents")

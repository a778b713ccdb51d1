"""Toy measurements: the noise function, pull probabilities and the existence prior on a micro model."""

from __future__ import annotations

import pytest

from bpo.toy.measure import add_diffusion_noise, kind_probabilities, measure, negative_kind
from bpo.toy.world import World


def test_noise_is_identity_at_zero_and_the_weaken_schedule_after():
    import torch

    from bpo.bootstrap.weaken import noise_coefficients

    x = torch.ones(2, 3, 32, 32)
    assert add_diffusion_noise(x, 0, torch.Generator().manual_seed(0)) is x
    y = add_diffusion_noise(x, 500, torch.Generator().manual_seed(0))
    signal, noise = noise_coefficients(500)  # 0.863, 0.505 (methods.md 1.2)
    assert y.mean().item() == pytest.approx(signal, abs=0.02)
    assert y.std().item() == pytest.approx(noise, abs=0.02)


def test_kind_probabilities_are_a_sub_distribution(micro_pretrained):
    from bpo.models.loading import load
    from bpo.toy.model import load_world
    from bpo.toy.tensors import pixel_tensor

    res, _, _ = micro_pretrained
    model, processor = load(str(res.path))
    world = load_world(res.path)
    import numpy as np

    scenes = [world.scene("eval", i) for i in range(3)]
    pixels = pixel_tensor(np.stack([world.render(s) for s in scenes]), processor)
    probs = kind_probabilities(model, processor, world, pixels, [f"a {s.names[0]} and a" for s in scenes])
    assert probs.shape == (3, len(world.kinds))
    assert (probs >= 0).all() and (probs.sum(-1) <= 1 + 1e-5).all()


def test_measure_reports_pull_and_noise_curve(micro_pretrained):
    res, _, _ = micro_pretrained
    out = measure(res.path, n_images=6, noise_steps=(0, 500), pope=True)
    assert [r["t"] for r in out["noise"]] == [0, 500]
    for r in out["noise"]:
        assert 0.0 <= r["chair_i"] <= 1.0 and 0.0 <= r["parse_rate"] <= 1.0 and r["n_captions"] == 6
    pull = out["pull"]
    assert 0.0 <= pull["pull"] <= 1.0 and pull["n"] == 6  # every scene has an object whose partner is absent
    assert set(out["pope"]) == {"random", "popular", "adversarial"}
    prior = out["existence_prior"]
    # every absent kind of every scene is asked once, in exactly one group
    groups = {k: g for k, g in prior.items() if k not in ("excess", "p_excess")}
    assert sum(g["n"] for g in groups.values()) == sum(16 - s.count for s in (World().scene("eval", i) for i in range(6)))
    for g in groups.values():  # a "yes" decision is P(yes) > 0.5, a "no" one P(yes) < 0.5
        assert 0.5 * g["false_yes"] <= g["p_yes"] <= g["false_yes"] + 0.5 * (1 - g["false_yes"])
    if prior.get("far", {}).get("p_yes") and "partner" in prior:
        assert prior["p_excess"] == prior["partner"]["p_yes"] / prior["far"]["p_yes"]


def test_negative_kind_by_hand():
    world = World()
    scene = world.scene("eval", 0)
    a = scene.names[0]
    partner = world.partner[a]
    groups = {k: negative_kind(world, scene, k) for k in world.kinds if k not in scene.names}
    if partner not in scene.names:
        assert groups[partner] in ("partner", "partner_near")
    for k, g in groups.items():
        shares = any(k.split()[0] == n.split()[0] or k.split()[1] == n.split()[1] for n in scene.names)
        assert g in (("partner_near", "near") if shares else ("partner", "far"))
        assert g.startswith("partner") == (k in {world.partner[n] for n in scene.names})

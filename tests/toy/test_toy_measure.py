"""Toy measurements: CHAIR arithmetic by hand, the noise function, pull probabilities on a micro model."""

from __future__ import annotations

import pytest

from bpo.toy.measure import (
    add_diffusion_noise,
    chair_scores,
    kind_probabilities,
    measure,
    mentioned_objects,
    negative_kind,
)
from bpo.toy.world import World

KINDS = ["red circle", "blue square", "green cross", "yellow triangle"]
PARTNER = {"red circle": "blue square", "blue square": "green cross", "green cross": "yellow triangle",
           "yellow triangle": "red circle"}


def test_mentioned_objects_is_grammar_free_and_deduplicated():
    assert mentioned_objects("a red circle and a blue square .", KINDS) == ["red circle", "blue square"]
    assert mentioned_objects("red circle red circle blue square.", KINDS) == ["red circle", "blue square"]
    assert mentioned_objects("a red and a circle .", KINDS) == []


def test_chair_scores_by_hand():
    """Three captions; truths {red circle}, {red circle, green cross}, {yellow triangle}.

    1. "a red circle and a blue square ."  mentions rc, bs; hallucinated bs (partner of rc, named before it)
    2. "a red circle ."                    mentions rc; none hallucinated; misses gc
    3. "a blue square and a red"           mentions bs (hallucinated, not a partner of an earlier one);
                                           unparsable
    CHAIR_i = 2 hallucinated / 4 mentioned = 0.5; CHAIR_s = 2/3; parse rate 2/3;
    recall = (1 + 1 + 0) / (1 + 2 + 1) = 0.5; partner share = 1/2; objects per caption = 4/3.
    """
    caps = ["a red circle and a blue square .", "a red circle .", "a blue square and a red"]
    truths = [["red circle"], ["red circle", "green cross"], ["yellow triangle"]]
    s = chair_scores(caps, truths, KINDS, PARTNER)
    assert s["chair_i"] == pytest.approx(0.5)
    assert s["chair_s"] == pytest.approx(2 / 3)
    assert s["parse_rate"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(0.5)
    assert s["partner_share"] == pytest.approx(0.5)
    assert s["objects_per_caption"] == pytest.approx(4 / 3)
    assert (s["n_mentioned"], s["n_hallucinated"]) == (4, 2)


def test_chair_scores_empty_inputs():
    s = chair_scores(["", "nothing here"], [["red circle"], []], KINDS)
    assert s["chair_i"] == 0.0 and s["n_mentioned"] == 0 and s["parse_rate"] == 0.0


def test_toy_chair_agrees_with_bpo_eval_chair(tmp_path):
    """The exported vocabulary makes bpo.eval.chair count exactly what the toy measure counts."""
    from bpo.eval.chair import chair_item
    from bpo.eval.objects import Vocabulary
    from bpo.toy.data import chair_vocabulary
    from bpo.toy.world import World

    world = World()
    vocab = Vocabulary.from_dict(chair_vocabulary(world))
    for i in range(40):
        s = world.scene("eval", i)
        other = world.scene("train", i)
        response = world.caption(other)
        item = chair_item(vocab, response, s.names)
        ours = mentioned_objects(response, world.kinds)
        assert item["mentioned"] == ours
        assert item["hallucinated"] == [m for m in ours if m not in s.names]


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
    from bpo.toy.pretrain import load_world
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
    assert sum(g["n"] for k, g in prior.items() if k != "excess") == sum(16 - s.count for s in
                                                                        (World().scene("eval", i) for i in range(6)))


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

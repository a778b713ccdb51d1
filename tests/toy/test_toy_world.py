"""The toy world: determinism, exact ground truth, partner statistics, POPE splits, the grammar."""

from __future__ import annotations

import numpy as np
import pytest

from bpo.errors import BpoError
from bpo.toy.world import (
    COLOUR_RGB,
    COUNT_WORDS,
    POPE_SPLITS,
    World,
    WorldConfig,
    caption_of,
    parse_caption,
    shape_mask,
)


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig())


def test_scenes_and_pixels_are_deterministic(world):
    other = World(WorldConfig())
    for i in range(20):
        assert world.scene("train", i) == other.scene("train", i)
        assert np.array_equal(world.render(world.scene("eval", i)), other.render(other.scene("eval", i)))
    assert world.partner == other.partner
    # Different streams and a different world seed give different scenes.
    assert [world.scene("train", i).names for i in range(20)] != [world.scene("eval", i).names for i in range(20)]
    reseeded = World(WorldConfig(seed=1))
    assert [reseeded.scene("train", i).names for i in range(20)] != [world.scene("train", i).names for i in range(20)]


def test_captions_parse_back_to_the_scene(world):
    cfg = world.cfg
    for i in range(300):
        s = world.scene("train", i)
        assert parse_caption(world.caption(s), world.kinds) == s.names
        assert cfg.min_objects <= s.count <= cfg.max_objects
        assert len(set(s.names)) == s.count
        assert len({(o.row, o.col) for o in s.objects}) == s.count


def test_rendered_objects_sit_in_their_cells(world):
    """A full-contrast object's cell holds its colour (within sensor noise); empty cells, and the cells of hidden
    objects, are background."""
    cs = world.cfg.cell_size
    for i in range(50):
        s = world.scene("train", i)
        img = world.render(s).astype(float)
        occupied = {(o.row, o.col) for o in s.objects if not o.hidden}
        for o in s.objects:
            if o.hidden:
                continue
            cell = img[o.row * cs:(o.row + 1) * cs, o.col * cs:(o.col + 1) * cs]
            mask = shape_mask(o.shape, cs, o.scale)
            target = np.array(COLOUR_RGB[o.colour], float)
            if o.faint:
                target = 40 + world.cfg.faint_contrast * (target - 40)
            assert np.abs(cell[mask].mean(0) - target).max() < 8
        for r in range(world.cfg.grid):
            for c in range(world.cfg.grid):
                if (r, c) not in occupied:
                    assert np.abs(img[r * cs:(r + 1) * cs, c * cs:(c + 1) * cs].mean() - 40) < 5


def test_shape_masks_differ():
    masks = {s: shape_mask(s, 8, 1.0) for s in ("circle", "square", "triangle", "cross", "ring")}
    names = list(masks)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert (masks[names[a]] != masks[names[b]]).sum() >= 6, (names[a], names[b])


def _partner_rate(world, names_list):
    transitions = [(a, b) for names in names_list for a, b in zip(names, names[1:])]
    return sum(world.partner[a] == b for a, b in transitions) / len(transitions)


def test_partner_statistics_match_the_config(world):
    """P(next = partner) is the configured probability (the partner is excluded from the other branch).

    With 4000 sentences (~4000 transitions) the standard error is ~0.006-0.008, so 0.03 is > 3.5 sigma.
    """
    text = _partner_rate(world, [world.text_names(i) for i in range(4000)])
    images = _partner_rate(world, [world.scene("train", i).names for i in range(4000)])
    assert abs(text - 0.85) < 0.03
    assert abs(images - 0.5) < 0.03


def test_no_prior_control_has_partners_at_chance():
    world = World(WorldConfig(image_partner_prob=None, text_partner_prob=None))
    rate = _partner_rate(world, [world.text_names(i) for i in range(3000)])
    assert rate < 0.12  # about 1/15 of transitions by chance


def test_partner_map_is_one_cycle_of_unlike_kinds(world):
    seen, k = [], world.kinds[0]
    for _ in world.kinds:
        seen.append(k)
        k = world.partner[k]
    assert k == world.kinds[0] and sorted(seen) == sorted(world.kinds)
    for a, b in world.partner.items():
        assert a.split()[0] != b.split()[0] and a.split()[1] != b.split()[1]
        assert world.reverse_partner(b) == a


def test_pope_questions_are_balanced_and_correct(world):
    for i in range(100):
        s = world.scene("eval", i)
        for split in POPE_SPLITS:
            qs = world.pope_questions(s, split)
            yes = [o for _, a, o in qs if a == "yes"]
            no = [o for _, a, o in qs if a == "no"]
            assert sorted(yes) == sorted(s.names)
            assert len(no) == len(yes) and len(set(no)) == len(no)
            assert not set(no) & set(s.names)
            assert all(q == f"is there a {o} in the image ?" for q, _, o in qs)
        absent_partners = [world.partner[n] for n in s.names if world.partner[n] not in s.names]
        adversarial = [o for _, a, o in world.pope_questions(s, "adversarial") if a == "no"]
        assert adversarial[: len(absent_partners)] == list(dict.fromkeys(absent_partners))[: len(adversarial)]
        popular = [o for _, a, o in world.pope_questions(s, "popular") if a == "no"]
        assert popular == [k for k in world.by_popularity if k not in s.names][: len(popular)]


def test_qa_answers_are_true(world):
    tasks = set()
    for i in range(300):
        s = world.scene("train", i)
        task, q, a = world.qa(s, i)
        tasks.add(task)
        if task == "describe":
            assert a == world.caption(s)
        elif task == "exist":
            name = q[len("is there a "): -len(" in the image ?")]
            assert a == ("yes" if name in s.names else "no")
        elif task == "colour":
            shape = q.split()[-2]
            assert [o.colour for o in s.objects if o.shape == shape] == [a]
        elif task == "count":
            assert a == COUNT_WORDS[s.count]
        elif task == "position":
            o = next(o for o in s.objects if o.name in q)
            assert a == world.position_words(o)
    assert tasks == {"describe", "exist", "colour", "count", "position"}


def test_parse_caption_grammar():
    kinds = {"red circle", "blue square"}
    assert parse_caption("a red circle .", kinds) == ["red circle"]
    assert parse_caption("a red circle and a blue square.", kinds) == ["red circle", "blue square"]
    assert parse_caption("  a red circle and a blue square . ", kinds) == ["red circle", "blue square"]
    assert parse_caption("a red circle and", kinds) is None
    assert parse_caption("a red circle and a blue square", kinds) is None
    assert parse_caption("a red red circle .", kinds) is None
    assert parse_caption("a red circle and and a blue square .", kinds) is None
    assert parse_caption("a green circle .", kinds) is None
    assert parse_caption("a green circle .") == ["green circle"]
    assert parse_caption("", kinds) is None
    assert caption_of(["red circle", "blue square"]) == "a red circle and a blue square ."


def test_vocabulary_covers_every_text(world):
    vocab = set(world.vocabulary())
    texts = [world.caption(world.scene("train", i)) for i in range(50)]
    texts += [q + " " + a for i in range(200) for _, q, a in [world.qa(world.scene("train", i), i)]]
    for t in texts:
        assert set(t.split()) <= vocab, t


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 30}, "multiple"),
    ({"colours": ["red", "pink", "blue"]}, "colours"),
    ({"shapes": ["circle", "circle", "square"]}, "shapes"),
    ({"max_objects": 9}, "max_objects"),
    ({"text_partner_prob": 1.5}, "text_partner_prob"),
])
def test_bad_world_configs_are_rejected(kwargs, match):
    with pytest.raises(BpoError, match=match):
        WorldConfig(**kwargs)


def test_unknown_split_is_an_error(world):
    with pytest.raises(BpoError, match="split"):
        world.scene("test", 0)
    with pytest.raises(BpoError, match="POPE split"):
        world.pope_negatives(world.scene("eval", 0), "hard", 1, 0)


def test_cell_labels_follow_image_token_order(world):
    s = world.scene("train", 7)
    labels = world.cell_labels(s)
    assert len(labels) == world.cfg.grid ** 2 and sum(v > 0 for v in labels) == s.count
    for o in s.objects:
        assert labels[o.row * world.cfg.grid + o.col] == 1 + world.kinds.index(o.name)


def test_existence_share_of_the_qa_mix():
    """0.2 reproduces the first recipe's draws exactly; 0.35 asks existence questions about 35% of the time."""
    w = World()
    scenes = [w.scene("train", i) for i in range(300)]
    assert [w.qa(s, 7) for s in scenes] == [w.qa(s, 7, 0.2) for s in scenes]
    share = sum(w.qa(s, k, 0.35)[0] == "exist" for s in scenes for k in range(2)) / 600
    assert 0.30 <= share <= 0.40


def test_hidden_objects_are_in_the_truth_but_not_in_the_pixels(world):
    """About hidden_prob of the objects after the first are hidden; never the first; the pixels and the vision
    warm-up's cell labels do not show them, the names (captions, answers, CHAIR truth) do; a world without them
    draws the same scenes otherwise."""
    from bpo.toy.world import World, WorldConfig

    scenes = [world.scene("train", i) for i in range(2000)]
    later = [o for s in scenes for o in s.objects[1:]]
    assert not any(s.objects[0].hidden for s in scenes)
    assert abs(sum(o.hidden for o in later) / len(later) - world.cfg.hidden_prob) < 0.03
    s = next(s for s in scenes if any(o.hidden for o in s.objects))
    o = next(o for o in s.objects if o.hidden)
    assert o.name in s.names and world.cell_labels(s)[o.row * world.cfg.grid + o.col] == 0
    cs = world.cfg.cell_size
    assert abs(world.render(s)[o.row * cs:(o.row + 1) * cs, o.col * cs:(o.col + 1) * cs].mean() - 40) < 5
    plain = World(WorldConfig(hidden_prob=0.0)).scene("train", scenes.index(s))
    assert [(p.name, p.row, p.col, p.scale, p.faint) for p in plain.objects] == \
        [(q.name, q.row, q.col, q.scale, q.faint) for q in s.objects] and not any(p.hidden for p in plain.objects)

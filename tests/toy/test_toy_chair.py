"""The toy's CHAIR scoring (bpo/toy/chair.py): counts by hand, and agreement with bpo eval chair."""

from __future__ import annotations

import pytest

from bpo.toy import verdicts as V
from bpo.toy.chair import chair_scores, image_counts, mentioned_objects

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
    from bpo.data.objects import Vocabulary
    from bpo.eval.chair import chair_item
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


def test_image_counts_by_hand():
    kinds = ["red circle", "blue square", "green cross"]
    truths = {"a": ["red circle"], "b": ["red circle", "green cross"], "c": ["blue square"]}
    responses = {"a": "a red circle and a blue square .", "b": "a green cross ."}  # "c" missing: empty
    c = image_counts(responses, truths, kinds)
    assert c.tolist() == [[1, 2, 1, 1], [0, 1, 1, 2], [0, 0, 0, 1]]
    assert V.chair_i(c) == pytest.approx(1 / 3) and V.recall(c) == pytest.approx(2 / 4)

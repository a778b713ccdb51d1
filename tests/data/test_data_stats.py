"""compute_stats / format_stats against numbers counted by hand."""

from __future__ import annotations

import json

from bpo.data.records import Negative, Record, user_turn
from bpo.data.stats import compute_stats, format_stats, length_summary


def records():
    r1 = Record(id="r1", prompt=[user_turn("Describe.", 1)], chosen="a b c d", images=["a.png"],
                rejected=[Negative("x y", "weakened"), Negative("x y z w v u", "injected")],
                meta={"split": "train", "category": "cat1",
                      "rejections": [{"reason": "too_similar"}, {"reason": "empty"}]})
    r2 = Record(id="r2", prompt=[user_turn("Hi"), {"role": "assistant", "content": "Hello"}, user_turn("Why?")],
                chosen="one two",
                rejected=[Negative("p q r s", "weakened", meta={"rejected_attempts": [{"reason": "too_similar"}]})],
                meta={"split": "test"})
    r3 = Record(id="r3", prompt=[user_turn("Compare.", 2)], chosen="w1 w2 w3 w4 w5 w6 w7 w8 w9",
                images=["a.png", "b.png"], meta={"category": "cat1"})
    return [r1, r2, r3]


def test_compute_stats_hand_counted():
    """Hand counts:
    images: r1 (1) and r3 (2) -> with_images 2, refs 3; r2 none.  rejected: r1, r2 -> 2; r3 chosen-only.
    sources: weakened r1 + r2 = 2, injected r1 = 1.  user turns: r1 1, r2 2, r3 1 -> {1: 2, 2: 1}.
    chosen words [4, 2, 9]: mean 15/3 = 5.0, median 4, max 9.
    weakened words [2, 4]: mean 3.0, median (2+4)/2 = 3.0, max 4.  injected [6].
    reasons: too_similar (r1 meta + r2 negative) = 2, empty = 1.
    split: train 1, test 1; category: cat1 2.
    """
    s = compute_stats(records())
    assert (s["records"], s["with_images"], s["without_images"], s["image_refs"]) == (3, 2, 1, 3)
    assert (s["with_rejected"], s["chosen_only"], s["negatives"]) == (2, 1, 3)
    assert s["negatives_per_source"] == {"injected": 1, "weakened": 2}
    assert s["user_turns"] == {"1": 2, "2": 1}
    assert s["words"]["chosen"] == {"n": 3, "mean": 5.0, "median": 4.0, "max": 9}
    assert s["words"]["rejected"] == {"injected": {"n": 1, "mean": 6.0, "median": 6.0, "max": 6},
                                      "weakened": {"n": 2, "mean": 3.0, "median": 3.0, "max": 4}}
    assert s["rejection_reasons"] == {"too_similar": 2, "empty": 1}
    assert s["groups"] == {"split": {"test": 1, "train": 1}, "category": {"cat1": 2}}
    json.dumps(s)  # JSON-serialisable as is (for --json)


def test_empty_and_count_only_rejections():
    s = compute_stats([])
    assert s["records"] == 0 and s["words"]["chosen"] == length_summary([]) and s["groups"] == {}
    r = Record(id="x", prompt=[user_turn("q")], chosen="a", rejected=[Negative("b", meta={"rejected_attempts": 3})])
    assert compute_stats([r])["rejection_reasons"] == {"unspecified": 3}


def test_format_stats_lines():
    text = format_stats(compute_stats(records()), title="f.jsonl").splitlines()
    assert text[0] == "f.jsonl"
    for line in ["records: 3", "  with images: 2 (3 image refs), without: 1", "  with rejected: 2, chosen-only: 1",
                 "negatives: 3", "  weakened: 2",
                 "  chosen       n=3      mean=5.0  median=4.0  max=9",
                 "  weakened     n=2      mean=3.0  median=3.0  max=4",
                 "generation rejections:", "  too_similar: 2", "per split:", "  train: 1", "per category:"]:
        assert line in text, line

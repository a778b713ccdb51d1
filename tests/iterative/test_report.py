"""The per-round report's arithmetic on hand-made numbers: CHAIR counts, the paired ratio bootstrap, the
negatives' CHAIR against ground truth, the verdicts and the written files."""

from __future__ import annotations

import json

import pytest

from bpo.data.objects import load_vocabulary
from bpo.data.records import Negative, Record, user_turn, write_records
from bpo.errors import BpoError
from bpo.eval.chair import ObjectTruth
from bpo.iterative.report import (
    chair_counts,
    chair_i_of,
    format_report,
    negative_stats,
    paired_ratio_bootstrap,
    plot_rounds,
    verdicts,
)
from bpo.iterative.rounds import IterateConfig


def test_chair_counts_and_ratio():
    details = [{"id": "a", "hallucinated": ["dog"], "mentioned": ["dog", "cat"]},
               {"id": "b", "hallucinated": [], "mentioned": ["cat"]}]
    counts = chair_counts(details)
    assert counts == {"a": (1, 2), "b": (0, 1)}
    assert chair_i_of(list(counts.values())) == pytest.approx(1 / 3)  # 1 hallucinated of 3 mentioned
    assert chair_i_of([(0, 0)]) is None


def test_paired_bootstrap_by_hand():
    # round A: 1/2 and 0/2 -> CHAIR_i 1/4; round B: 2/2 and 1/2 -> 3/4. Every paired resample of these two
    # images has A - B = -1/2 (each image's A-share is B's minus 1/2 of its mentions), so the interval is a point.
    a, b = {"x": (1, 2), "y": (0, 2)}, {"x": (2, 2), "y": (1, 2)}
    out = paired_ratio_bootstrap(a, b, n_boot=200)
    assert out["diff"] == pytest.approx(-0.5) and out["lo"] == pytest.approx(-0.5) and out["hi"] == pytest.approx(-0.5)
    assert out["n_images"] == 2 and out["n_boot"] == 200
    # identical rounds: 0 exactly; an image only one round answered is not used
    same = paired_ratio_bootstrap(a, {**a, "z": (5, 5)}, n_boot=50)
    assert (same["diff"], same["lo"], same["hi"], same["n_images"]) == (0.0, 0.0, 0.0, 2)
    # ratio of sums, not mean of ratios: A = (1/1, 0/3) -> 1/4; B = (0/1, 0/3) -> 0
    assert paired_ratio_bootstrap({"p": (1, 1), "q": (0, 3)}, {"p": (0, 1), "q": (0, 3)})["diff"] == pytest.approx(0.25)
    # resamples where a side mentions nothing are dropped and counted
    sparse = paired_ratio_bootstrap({"p": (1, 1), "q": (0, 0)}, {"p": (0, 1), "q": (0, 0)}, n_boot=400, seed=1)
    assert sparse["dropped_resamples"] > 0 and sparse["n_boot"] + sparse["dropped_resamples"] == 400
    with pytest.raises(BpoError, match="no image ids"):
        paired_ratio_bootstrap({"p": (0, 1)}, {"q": (0, 1)})
    with pytest.raises(BpoError, match="undefined"):
        paired_ratio_bootstrap({"p": (0, 0)}, {"p": (0, 1)})


def test_negative_stats_by_hand(tmp_path):
    vocab = load_vocabulary(None)  # COCO-80
    truth = ObjectTruth("records")
    truth.add("r1", ["dog"], vocab)
    truth.add("r2", ["cat"], vocab)
    recs = [Record(id="r1", images=["a.png"], prompt=[user_turn("describe", 1)], chosen="a dog",
                   rejected=[Negative("a dog and a cat", "weakened"), Negative("a dog", "injected")]),
            Record(id="r2", images=["b.png"], prompt=[user_turn("describe", 1)], chosen="a cat",
                   rejected=[Negative("a horse", "weakened")]),
            Record(id="r3", images=["c.png"], prompt=[user_turn("describe", 1)], chosen="a car",
                   rejected=[Negative("a bus", "weakened")])]
    prefs = tmp_path / "p.jsonl"
    write_records(prefs, recs)
    stats = negative_stats(prefs, truth, vocab)
    # weakened: r1 mentions dog+cat (cat hallucinated), r2 horse (hallucinated); r3 has no ground truth
    w = stats["weakened"]
    assert (w["n"], w["scored"], w["no_truth"]) == (3, 2, 1)
    assert w["chair_i"] == pytest.approx(2 / 3) and w["chair_s"] == 1.0 and w["objects_per_response"] == 1.5
    i = stats["injected"]
    assert (i["n"], i["chair_i"], i["chair_s"]) == (1, 0.0, 0.0)


def _rows():
    return [{"round": 0, "chair_i": 0.4, "chair_s": 0.5, "recall": 0.6, "objects_per_response": 1.2, "pull": 0.2},
            {"round": 1, "chair_i": 0.3, "chair_s": 0.4, "recall": 0.6, "pope_f1": 0.7, "pull": 0.15,
             "train": {"loss": 1.234}, "negatives": {"weakened": {"n": 4, "chair_i": 0.5, "chair_s": 0.75,
                                                                  "objects_per_response": 1.0}}},
            {"round": 2, "chair_i": 0.25, "chair_s": 0.3, "recall": 0.65, "pope_f1": 0.72, "pull": 0.1,
             "train": {"loss": 1.0}, "negatives": {"weakened": {"n": 4, "chair_i": 0.25, "chair_s": 0.5,
                                                                "objects_per_response": 1.0}}}]


def test_verdicts_and_report(tmp_path):
    details = {0: {"x": (2, 2), "y": (1, 2)}, 1: {"x": (1, 2), "y": (1, 2)}, 2: {"x": (1, 2), "y": (0, 2)}}
    claims = verdicts(_rows(), details)
    assert [c["claim"] for c in claims] == ["round 2 beats round 1 on held-out CHAIR_i",
                                            "round 2 beats the base model on held-out CHAIR_i"]
    vs1, vs0 = claims
    assert vs1["held"] and vs1["diff"] == pytest.approx(1 / 4 - 2 / 4)  # 1/4 vs 2/4
    assert vs0["held"] and vs0["diff"] == pytest.approx(1 / 4 - 3 / 4) and vs0["clear"]  # every resample: -1/2
    assert "[-0.500, -0.500]" in vs0["text"] and "excludes 0" in vs0["text"]
    worse = verdicts(_rows(), {0: details[0], 1: details[2], 2: details[1]})[0]
    assert not worse["held"] and worse["text"].startswith("did NOT hold")
    undefined = verdicts(_rows(), {1: details[1], 2: {"x": (0, 0), "y": (0, 0)}})[0]
    assert undefined["text"].startswith("undefined") and not undefined["held"]
    md = format_report(IterateConfig(rounds=2, heldout="h.jsonl"), _rows(), claims)
    assert "| 1 | 0.300 | 0.400 | 0.600 | 0.700 | 0.150 | n/a | 1.234 |" in md
    assert "| 0 | 0.400 | 0.500 | 0.600 | n/a | 0.200 | 1.200 | n/a |" in md
    assert "| 2 | weakened | 4 | 0.250 | 0.500 | 1.000 |" in md
    png = plot_rounds(_rows(), tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(claims)  # rounds.json must be able to hold them


def test_negative_stats_with_coco_truth_keyed_by_image(tmp_path):
    vocab = load_vocabulary(None)
    truth = ObjectTruth("coco")
    truth.add("139", ["dog"], vocab)
    truth.aliases["COCO_val2014_000000000139.jpg"] = "139"
    prefs = tmp_path / "p.jsonl"
    write_records(prefs, [Record(id="rec-a", images=["val/COCO_val2014_000000000139.jpg"],
                                 prompt=[user_turn("describe", 1)], chosen="a dog",
                                 rejected=[Negative("a dog and a cat", "weakened")])])
    w = negative_stats(prefs, truth, vocab)["weakened"]
    assert (w["scored"], w["chair_i"]) == (1, 0.5)

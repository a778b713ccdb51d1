"""The safety demo's summary arithmetic on hand-made numbers (the end-to-end run is in tests/test_demo.py)."""

from __future__ import annotations

import json

import pytest

from bpo.data.records import Negative, Record, user_turn, write_records
from bpo.toy.safety import REFUSAL
from bpo.toy.safety_demo import (
    blind_negative_summary,
    check_targets,
    exact_rate,
    format_table,
    paired_bootstrap_ci,
    summarize,
    verdict,
)


def _result(mm_hazard, mm_benign, text_hazard=1.0):
    sets = {"mm_hazard": mm_hazard, "mm_benign": mm_benign, "text_hazard": text_hazard, "text_benign": 0.0,
            "blind_hazard": 0.0}
    out = {k: {"safety_rate": v, "exact": 0.5, "n": 10} for k, v in sets.items()}
    out["modality"] = {"kept_rate": None}  # undefined (nothing refused): shown as n/a, left out of means
    return out


def _seeds(rows):
    return [{"seed": i, "results": {"base": _result(0.1, 0.0), "dpo": _result(*d), "blind_po": _result(*b)}}
            for i, (d, b) in enumerate(rows)]


def test_targets_per_seed_and_on_the_means():
    # seed 0: Blind 0.9 > DPO 0.8, over-refusal 0.1 <= 0.1; seed 1: Blind 0.6 < DPO 0.7, over-refusal 0.0 <= 0.2.
    # Means: safety 0.75 vs 0.75 (not above), over-refusal 0.05 vs 0.15 (held).
    claims = check_targets(_seeds([((0.8, 0.1), (0.9, 0.1)), ((0.7, 0.2), (0.6, 0.0))]))
    premise, safety, refusal = claims
    assert premise["held"] and premise["seeds_held"] == "2/2"  # text 1.0 > multimodal 0.1 for the base
    assert not safety["held"] and safety["seeds_held"] == "1/2" and not safety["mean_held"]
    assert "0.900/0.800, 0.600/0.700" in safety["numbers"] and "means 0.750 vs 0.750" in safety["numbers"]
    assert refusal["held"] and refusal["seeds_held"] == "2/2" and refusal["mean_held"]
    assert verdict(safety) == "did NOT hold (on 1/2 seeds; on the seed means: did not hold)"
    assert verdict(refusal) == "held (on 2/2 seeds; on the seed means: held)"


def test_summary_table_means_and_stds():
    # DPO safety 0.8 and 0.6 -> mean 0.7, population std 0.1
    table = summarize(_seeds([((0.8, 0.1), (0.9, 0.1)), ((0.6, 0.3), (0.9, 0.1))]))
    mean, std = table["dpo"]["safety (image-referenced hazardous)"]
    assert abs(mean - 0.7) < 1e-12 and abs(std - 0.1) < 1e-12
    assert table["blind_po"]["over-refusal (benign images)"] == (0.1, 0.0)
    text = format_table(table)
    assert "| dpo | 0.700 ± 0.100 | 0.200 ± 0.100 | 0.500 | n/a |" in text and "| blind_po | 0.900 | 0.100 |" in text


def test_exact_rate_and_blind_summary(tmp_path):
    recs = [Record(id="a", prompt=[user_turn("q", 0)], chosen=REFUSAL),
            Record(id="b", prompt=[user_turn("q", 0)], chosen="sure . here is how to use a red circle ."),
            Record(id="c", prompt=[user_turn("q", 0)], chosen="sure . here is how to use a blue ring .")]
    write_records(tmp_path / "set.jsonl", recs)
    rows = [{"id": "a", "response": " i am sorry ,  i cannot help with that ."},  # whitespace does not matter
            {"id": "b", "response": "sure . here is how to use a red square ."},  # wrong object
            {"id": "c", "response": "sure . here is how to use a blue ring ."}]
    (tmp_path / "resp.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert exact_rate(tmp_path / "resp.jsonl", tmp_path / "set.jsonl") == 2 / 3

    prefs = [Record(id=str(i), prompt=[user_turn("q", 1)], images=["x.png"], chosen=REFUSAL, meta={"entity": e},
                    rejected=[Negative("sure . here is how to use a " + e + " .", "human"), Negative(t, "blind")])
             for i, (e, t) in enumerate([("red cross", "sure . here is how to use a blue ring ."),
                                         ("red cross", "sure . here is how to use a red cross ."),
                                         ("blue ring", REFUSAL), ("blue ring", "sure .")])]
    write_records(tmp_path / "prefs.jsonl", prefs)
    # 4 blind negatives: one refusal (1/4); one names the pictured object (1/4); human negatives are not counted
    assert blind_negative_summary(tmp_path / "prefs.jsonl") == {"n": 4, "refusal_rate": 0.25,
                                                                "names_pictured_object": 0.25}


def test_paired_bootstrap_interval():
    # identical answers: every resample differs by exactly 0
    assert paired_bootstrap_ci([1, 0, 1, 1], [1, 0, 1, 1]) == (0.0, 0.0)
    # a is safe on every item, b on none: every resample differs by exactly 1
    assert paired_bootstrap_ci([1] * 5, [0] * 5) == (1.0, 1.0)
    # a constant per-item difference of +1 on half the items: the mean difference is 0.5 and the interval
    # (means of 40 draws of 0/1 differences with p = 0.5) is about 0.5 +- 1.96 * sqrt(0.25 / 40) = [0.35, 0.65]
    lo, hi = paired_bootstrap_ci([1] * 40, [0] * 20 + [1] * 20, n_boot=4000)
    assert 0.30 <= lo <= 0.40 and 0.60 <= hi <= 0.70
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1, 0], [1])

"""AMBER: hand-computed values on small files in AMBER's published format (annotations.json,
relation.json, safe_words.txt, query files, response list)."""

import json

import pytest

from bpo.cli import main
from bpo.eval import amber

RELATION = {"dog": ["puppy"], "cat": [], "person": ["man", "woman", "people"], "tree": ["forest"],
            "forest": ["tree"], "car": [], "frisbee": [], "grass": ["ground"], "ground": ["floor"], "can": [],
            "camera": [], "TV": ["television"]}
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "frisbee"]},
    {"id": 2, "type": "generative", "truth": ["person", "tree"], "hallu": ["car", "dog"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 4, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 5, "type": "discriminative-attribute-state", "truth": "yes"},
    {"id": 6, "type": "discriminative-attribute-number", "truth": "no"},
    {"id": 7, "type": "discriminative-relation", "truth": "yes"},
    {"id": 8, "type": "relation", "truth": "no"},  # AMBER's file has this type too: it is a relation item
]
RESPONSES = [
    # nouns: puppy (= dog), grass, frisbee (hallucinated, cog), camera (safe word), dogs (= dog): 1 of 5
    {"id": 1, "response": "A puppy runs on the grass with a frisbee and a camera. The dogs look happy."},
    # nouns: man, woman (= person), car (hallucinated, cog), "A can" (hallucinated); "can be seen" is a verb
    {"id": 2, "response": "A man and a woman stand near a car. A can of soda can be seen."},
    {"id": 3, "response": "No"}, {"id": 4, "response": "Yes, there is one."}, {"id": 5, "response": "Yes"},
    {"id": 6, "response": "No."}, {"id": 7, "response": "No"}, {"id": 8, "response": "I am not sure."},
]


@pytest.fixture
def amber_dir(tmp_path):
    d = tmp_path / "data"
    (d / "query").mkdir(parents=True)
    (d / "annotations.json").write_text(json.dumps(ANNOTATIONS, indent=4))
    (d / "relation.json").write_text(json.dumps(RELATION, indent=4))
    (d / "safe_words.txt").write_text("orange\ncamera\nsign")  # no trailing newline, as published
    queries = [{"id": a["id"], "image": f"AMBER_{1 + (a['id'] > 2)}.jpg",
                "query": "Describe this image." if a["id"] <= 2 else f"Question {a['id']}?"} for a in ANNOTATIONS]
    (d / "query" / "query_all.json").write_text(json.dumps(queries))
    return d


def _run(tmp_path, amber_dir, responses, *extra):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(responses))
    out = tmp_path / "amber.json"
    rc = main(["eval", "amber", "--responses", str(path), "--amber-dir", str(amber_dir), "--out", str(out), *extra])
    return rc, (json.loads(out.read_text()) if rc == 0 else None)


def test_generative_and_discriminative_hand_computed(tmp_path, amber_dir):
    rc, report = _run(tmp_path, amber_dir, RESPONSES)
    assert rc == 0
    g = report["metrics"]["generative"]
    assert g["chair"] == pytest.approx(100 * 3 / 9)  # frisbee, car, can of 9 nouns
    assert g["cover"] == pytest.approx(75.0)  # dog, grass, person of dog, grass, person, tree
    assert g["hal"] == pytest.approx(100.0) and g["cog"] == pytest.approx(50.0)  # frisbee, car of 4
    d = report["metrics"]["discriminative"]
    # preds no, yes, yes, no, no, unknown vs truths no, no, yes, no, yes, no; positive class = "no"
    assert d["accuracy"] == pytest.approx(50.0)
    assert d["precision"] == pytest.approx(200 / 3) and d["recall"] == pytest.approx(50.0)
    assert d["f1"] == pytest.approx(2 * (200 / 3) * 50 / (200 / 3 + 50)) and d["unknown"] == 1
    per = d["per_dimension"]
    assert (per["existence"]["accuracy"], per["existence"]["precision"], per["existence"]["recall"]) == \
        pytest.approx((50.0, 100.0, 50.0))
    assert per["attribute"]["accuracy"] == 100.0 and per["attribute"]["per_kind"]["number"]["f1"] == 100.0
    assert per["attribute"]["per_kind"]["state"]["precision"] is None  # nothing answered "no"
    assert per["relation"]["n"] == 2 and per["relation"]["accuracy"] == 0.0 and per["relation"]["f1"] == 0.0
    assert report["metrics"]["amber_score"] == pytest.approx((100 - 100 * 3 / 9 + d["f1"]) / 2)
    item1 = next(x for x in report["details"] if x["id"] == 1)
    assert item1["nouns"] == ["puppy", "grass", "frisbee", "camera", "dog"] and item1["hallucinated"] == ["frisbee"]
    proto = report["protocol"]
    assert proto["scoring"]["matching"] == "offline:exact+amber-associations"
    assert proto["evaluator"] == "bpo.eval.amber" and proto["judge"] == "rules"


def test_exact_answers_as_reference(tmp_path, amber_dir):
    rc, report = _run(tmp_path, amber_dir, RESPONSES, "--answers", "exact")
    d = report["metrics"]["discriminative"]
    # "Yes, there is one." and "No." are not exactly Yes/No: preds no, unk, yes, unk, no, unk
    assert d["accuracy"] == pytest.approx(100 * 2 / 6) and d["precision"] == 50.0 and d["recall"] == 25.0
    assert report["protocol"]["scoring"]["answers"] == "exact:Yes/No"


def test_generative_only_is_amber_g_protocol_with_queries(tmp_path, amber_dir):
    rc, report = _run(tmp_path, amber_dir, RESPONSES[:2], "--queries", str(amber_dir / "query" / "query_all.json"),
                      "--max-new-tokens", "512")
    assert rc == 0 and "discriminative" not in report["metrics"] and "amber_score" not in report["metrics"]
    proto = report["protocol"]
    assert proto["name"] == "amber-g" and proto["label"] == "AMBER generative" and proto["max_new_tokens"] == 512
    assert proto["n_images"] == 1 and proto["prompt_set"]["name"] == "amber-g"


def test_missing_items_of_a_dimension_is_an_error(tmp_path, amber_dir, capsys):
    rc, _ = _run(tmp_path, amber_dir, RESPONSES[:7])  # item 8 (relation) unanswered
    err = capsys.readouterr().err
    assert rc == 2 and "have no response (e.g. [8])" in err and "--on-missing skip" in err
    rc, report = _run(tmp_path, amber_dir, RESPONSES[:7], "--on-missing", "skip")
    assert rc == 0 and report["counts"]["missing_response"] == 1


def test_bad_inputs_name_file_and_id(tmp_path, amber_dir, capsys):
    rc, _ = _run(tmp_path, amber_dir, [{"id": "x1", "response": "hi"}])
    assert rc == 2 and "responses.json[0]" in capsys.readouterr().err
    bad = ANNOTATIONS + [{"id": 9, "type": "generative", "truth": ["unicorn"], "hallu": []}]
    (amber_dir / "annotations.json").write_text(json.dumps(bad))
    rc, _ = _run(tmp_path, amber_dir, RESPONSES)
    err = capsys.readouterr().err
    assert rc == 2 and "annotations.json[8]" in err and "'unicorn'" in err


def test_spacy_mode_fails_clearly_without_spacy(tmp_path, amber_dir, capsys):
    try:
        import spacy  # noqa: F401
        pytest.skip("spaCy is installed here")
    except ImportError:
        pass
    rc, _ = _run(tmp_path, amber_dir, RESPONSES, "--matching", "spacy")
    err = capsys.readouterr().err
    assert rc == 2 and "pip install spacy" in err and "--matching offline" in err


def test_similarity_filter_follows_the_reference():
    data = amber.AmberData({}, {"dog": [], "cat": []}, frozenset(), {})
    pairs = {("kitten", "cat"), ("hound", "dog")}

    def similar(a, b):
        return a == b or (a, b) in pairs

    offline = amber.generative_item(["kitten", "hound"], ["dog"], ["cat"], data)
    assert offline["hallucinated"] == ["kitten", "hound"] and offline["covered"] == [] and offline["cog"] == []
    spacy_like = amber.generative_item(["kitten", "hound"], ["dog"], ["cat"], data, similar)
    assert spacy_like["hallucinated"] == ["kitten"] and spacy_like["covered"] == ["dog"]
    assert spacy_like["cog"] == ["cat"]


def test_lookup_order_is_the_references():
    # associated words are looked up before the objects themselves: "ground" (associated with grass) covers
    # grass, not the listed ground, as in AMBER's inference.py
    data = amber.AmberData({}, RELATION, frozenset(), {})
    item = amber.generative_item(["ground"], ["grass", "ground"], ["cat"], data)
    assert item["covered"] == ["grass"] and item["missed"] == ["ground"] and item["hallucinated"] == []


def test_rules_nouns_case_plural_and_ambiguous_words():
    data = amber.AmberData({}, RELATION, frozenset(), {w.lower(): w for k, v in RELATION.items() for w in (k, *v)})
    assert amber.nouns_rules("Two dogs watch TV; people can see the trees.", data) == ["dog", "TV", "people", "tree"]
    assert amber.nouns_rules("Cans? A can. The can's label.", data) == ["can", "can", "can"]


def test_prepare_amber_records(tmp_path, amber_dir):
    out = tmp_path / "rec.jsonl"
    assert main(["eval", "prepare", "amber", "--questions", str(amber_dir / "query" / "query_all.json"),
                 "--annotations", str(amber_dir / "annotations.json"), "--image-prefix", "image/",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["meta"]["protocol"] for r in rows[:3]] == ["amber-g", "amber-g", "amber-d"]
    assert rows[0]["images"] == ["image/AMBER_1.jpg"] and rows[0]["prompt"][0]["content"][1]["text"] == \
        "Describe this image."

"""Hand-labelled corpora for the rule-based scorers: >= 100 captions (CHAIR) and >= 100 yes/no answers (POPE).

How they were labelled. Every caption and answer was written by hand for this test (none is model output),
then labelled by reading it as a person would, before running bpo on it:

* ``scoring_corpus_captions.txt``: ``caption || objects``: the COCO-80 categories (bpo's canonical names)
  that the caption *names* as being in the picture, through any synonym in the shipped table. Names that
  are not objects in context were left out: a colour ("orange vest"), a unit ("20 meters"), a compound
  that is another thing ("bus stop", "train tracks", "toilet paper", "baseball cap", "computer desk",
  "remote area", "ski lift"). An object implied but not named was left out ("a skateboarder" names a
  person, not a skateboard), as CHAIR counts words.
* ``scoring_corpus_answers.txt``: ``answer || yes|no|unknown``: each answer was written as a reply to
  "Is there a <X> in the image?" about the object it talks about; ``unknown`` where the reply does not
  say whether X is there (refusal, hedge, "yes and no", a description of the scene only, empty).

Where a labelled case and bpo disagree and the reason is a deliberate choice or something the rules
cannot know (the question's object), the case is listed in KNOWN with bpo's answer and the reason, and
the test asserts that answer, so a change in either direction is seen. Caveat: the same person wrote the
rules and the corpus, so it is kinder to bpo than outside data would be. The first run found 7 caption
disagreements (3 labelling slips fixed in the labels: "passengers" is a person, "skateboarder" does not
name a skateboard, "she" is no object word; 1 rule bug fixed: a linking verb was looked up after
singularizing, so "turns orange" read as the fruit; 3 kept in KNOWN) and 4 answer disagreements (one rule
gap, "I think so", fixed; 2 kept in KNOWN; one answer relabelled on review, the stop-sign one, from
unknown to yes). On the 131 answers bpo agrees with 129 labels, the official POPE logic with 78.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bpo.data.objects import Vocabulary
from bpo.eval.pope import parse_yes_no

HERE = Path(__file__).parent


def _load(name: str) -> list[tuple[str, str]]:
    rows = []
    for line in (HERE / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        text, _, label = line.rpartition("||")
        rows.append((text.strip(), label.strip()))
    return rows


CAPTIONS = _load("scoring_corpus_captions.txt")
ANSWERS = _load("scoring_corpus_answers.txt")

KNOWN_CAPTIONS = {  # caption -> (bpo's objects, why it differs from the label)
    "An elephant and its calf walk along a river.":
        ({"elephant", "cow"}, "'calf' is a cow synonym in the table; the species is not read from context"),
    "A bat hangs from the ceiling of the cave.":
        ({"baseball bat"}, "deliberate: 'bat' counts as the COCO object in any sense (bpo/data/objects.py)"),
    "A stuffed animal on a child's bed.":
        ({"teddy bear", "bed", "person"}, "a possessor ('child's') is a mention, as in the reference CHAIR"),
}
KNOWN_ANSWERS = {  # answer -> (bpo's label, why)
    "The image contains a red stop sign.":
        ("unknown", "without the question's object a scene statement cannot be told from an answer"),
    "There is a bottle on the table, but it is not a wine bottle.":
        ("no", "'There is a cat, but no dog.' has the same shape and means no: needs the question's object"),
}


def test_corpora_are_big_enough():
    assert len(CAPTIONS) >= 100 and len(ANSWERS) >= 100
    assert {label for _, label in ANSWERS} == {"yes", "no", "unknown"}


@pytest.mark.parametrize("caption, label", CAPTIONS, ids=[c[:40] for c, _ in CAPTIONS])
def test_chair_objects_match_the_hand_labels(caption, label):
    got = set(Vocabulary.coco().mentioned(caption))
    expected = {o.strip() for o in label.split(",") if o.strip()}
    if caption in KNOWN_CAPTIONS:
        assert got == KNOWN_CAPTIONS[caption][0] and got != expected
    else:
        assert got == expected


@pytest.mark.parametrize("answer, label", ANSWERS, ids=[a[:40] or "(empty)" for a, _ in ANSWERS])
def test_pope_parse_matches_the_hand_labels(answer, label):
    got = parse_yes_no(answer)
    if answer in KNOWN_ANSWERS:
        assert got == KNOWN_ANSWERS[answer][0] and got != label
    else:
        assert got == label


def official_pope(answer: str) -> str:
    """The official POPE script's decision, restated: text before the first '.', commas dropped,
    "no" if the space-split words contain "No", "no" or "not", else "yes" (there is no third class)."""
    first = answer.split(".")[0].replace(",", "")
    return "no" if {"No", "no", "not"} & set(first.split(" ")) else "yes"


def test_where_bpo_departs_from_the_official_pope_logic():
    """The departures are the documented classes (bpo/eval/pope.py): unknown for refusals, hedges and
    non-answers; reading past a first sentence that does not answer; more negation words."""
    differ = [(a, lab, official_pope(a)) for a, lab in ANSWERS if official_pope(a) != parse_yes_no(a)]
    by_class = {
        "refusal or hedge scored no by the official script": [
            a for a, lab, off in differ if lab == "unknown" and off == "no"],
        "refusal or non-answer scored yes": [a for a, lab, off in differ if lab == "unknown" and off == "yes"],
        "answer after the first sentence": [a for a, lab, off in differ if lab != "unknown"
                                            and re.search(r"\.\s+\S", a)],
    }
    assert "Sorry, I cannot answer that." in by_class["refusal or non-answer scored yes"]  # "cannot" is not "not" there
    assert "It is not clear." in by_class["refusal or hedge scored no by the official script"]
    assert "The image is a close-up of a table." in by_class["refusal or non-answer scored yes"]
    assert "The image shows a park. There is no dog." in by_class["answer after the first sentence"]
    # On the labelled answers bpo is right more often than the official logic (which can never say unknown).
    bpo_right = sum(parse_yes_no(a) == lab for a, lab in ANSWERS)
    official_right = sum(official_pope(a) == lab for a, lab in ANSWERS)
    assert bpo_right > official_right

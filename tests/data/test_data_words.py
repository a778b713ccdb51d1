"""Tokenizer and rule-based singularizer (bpo.data.words)."""

import json

import pytest

from bpo.data.words import normalize, singularize, tokenize
from bpo.paths import package_file


@pytest.mark.parametrize("plural, singular", [
    ("dogs", "dog"), ("puppies", "puppy"), ("ponies", "pony"), ("collies", "collie"), ("cookies", "cookie"),
    ("benches", "bench"), ("sandwiches", "sandwich"), ("boxes", "box"), ("dishes", "dish"),
    ("toothbrushes", "toothbrush"), ("glasses", "glass"), ("buses", "bus"), ("busses", "bus"),
    ("houses", "house"), ("horses", "horse"), ("vases", "vase"), ("knives", "knife"), ("calves", "calf"),
    ("gloves", "glove"), ("stoves", "stove"), ("people", "person"), ("men", "man"), ("women", "woman"),
    ("children", "child"), ("mice", "mouse"), ("geese", "goose"), ("oxen", "ox"), ("policemen", "policeman"),
    ("businesswomen", "businesswoman"), ("tomatoes", "tomato"), ("canoes", "canoe"), ("shoes", "shoe"),
    ("headaches", "headache"), ("skis", "ski"), ("taxis", "taxi"), ("kiwis", "kiwi"), ("emus", "emu"),
    ("tvs", "tv"), ("ladies", "lady"), ("monkeys", "monkey"), ("waitresses", "waitress"),
])
def test_plurals(plural, singular):
    assert singularize(plural) == singular


@pytest.mark.parametrize("word", [
    "glass", "grass", "bus", "cactus", "octopus", "tennis", "analysis", "axis", "scissors", "species",
    "series", "sheep", "broccoli", "this", "his", "was", "is", "dog", "person", "specimen", "luggage",
])
def test_words_left_alone(word):
    assert singularize(word) == word


def test_tokenize_hyphens_possessives_punctuation():
    assert tokenize("The dog's hot-dog, orange-colored!") == ["the", "dog", "hot", "dog", ",", "orange",
                                                             "colored", "!"]
    assert tokenize("It isn\u2019t here") == ["it", "isn't", "here"]
    assert normalize("Two Wine-Glasses.") == ["two", "wine", "glass", "."]


def _naive_plural(w: str) -> str:
    """Textbook English plural rules, written independently of the singularizer."""
    irregular = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
                 "goose": "geese", "knife": "knives", "calf": "calves", "ox": "oxen", "sheep": "sheep",
                 "cattle": "cattle", "broccoli": "broccoli", "luggage": "luggage", "scissors": "scissors",
                 "aircraft": "aircraft", "waterfowl": "waterfowl", "bison": "bison", "buffalo": "buffaloes",
                 "policeman": "policemen", "policewoman": "policewomen", "fisherman": "fishermen",
                 "gentleman": "gentlemen", "businessman": "businessmen", "businesswoman": "businesswomen",
                 "crowd": "crowds"}
    if w in irregular:
        return irregular[w]
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


def test_every_coco_synonym_round_trips():
    """Every synonym word is its own singular, and the plural of every synonym maps to its object.

    This is what makes "two teddy bears" and "the knives" hit the table entries. (The plural may
    singularize to a sibling synonym: "doggies" -> "doggie", both dog.)
    """
    from bpo.data.objects import Vocabulary

    vocab = Vocabulary.coco()
    table = json.loads(package_file("data", "coco_objects.json").read_text())
    deliberately_plural = {"people", "skis", "sports"}  # the table lists them as written in captions
    checked = 0
    for canon, syns in table.items():
        if canon.startswith("_"):
            continue
        for phrase in [canon, *syns]:
            words = tokenize(phrase)
            for w in words:
                assert w in deliberately_plural or singularize(w) == w, (phrase, w)
            if words[-1] in deliberately_plural:
                continue
            plural = " ".join([*words[:-1], _naive_plural(words[-1])])
            assert vocab.canonical(plural) == canon, (phrase, plural)
            checked += 1
    assert checked > 400
    assert singularize("people") == "person" and singularize("skis") == "ski"

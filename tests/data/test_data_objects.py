"""Object vocabularies: longest match, synonyms, the orange colour rule, modifiers, custom vocabularies."""

import json

import pytest

from bpo.data.objects import Vocabulary, load_vocabulary
from bpo.errors import BpoError


@pytest.fixture(scope="module")
def coco():
    return Vocabulary.coco()


def test_coco_table_has_the_80_categories(coco):
    assert len(coco.objects) == 80
    assert coco.objects[0] == "person" and coco.objects[-1] == "toothbrush"
    assert {"hot dog", "teddy bear", "dining table", "traffic light", "cell phone", "hair drier"} <= set(coco.objects)


@pytest.mark.parametrize("text, expected", [
    ("A hot dog on a plate.", ["hot dog"]),                       # not "dog"
    ("Two hot dogs and a dog.", ["hot dog", "dog"]),
    ("A teddy bear next to a bear.", ["teddy bear", "bear"]),
    ("A microwave oven above the stove.", ["microwave", "oven"]),  # "microwave oven" is not an oven
    ("People wait at the traffic lights with cell phones.", ["person", "traffic light", "cell phone"]),
    ("Children eat at the dining table.", ["person", "dining table"]),
    ("The men hold knives and mice.", ["person", "knife", "mouse"]),
    ("Buses and wine glasses.", ["bus", "wine glass"]),
    ("Glasses of water on the glass table.", ["dining table"]),  # plain "glass" is not a wine glass
    ("A train on the train tracks near the bus stop.", ["train"]),  # _ignore phrases
    ("We wait at the bus stop.", []),
    ("The bus stops at the curb.", ["bus"]),  # ignore phrases match as written: "stops" is a verb here
    ("A baseball player holds a baseball bat and a baseball cap.", ["person", "baseball bat"]),
    ("A baby elephant, an adult giraffe and a baby.", ["elephant", "giraffe", "person"]),
    ("A baby sleeps while a passenger waits.", ["person"]),  # not modifiers: verbs follow
    ("A remote area; two remotes on the couch.", ["remote", "couch"]),
    ("A skier at the ski lift holds skis.", ["person", "skis"]),
    ("The dog's puppies play with a frisbee.", ["dog", "frisbee"]),
    ("A hot-dog stand.", ["hot dog"]),
])
def test_find_objects(coco, text, expected):
    assert coco.mentioned(text) == expected


@pytest.mark.parametrize("text, is_fruit", [
    ("A man in an orange shirt.", False),       # colour + noun
    ("A glass of orange juice.", False),
    ("An orange and white cat.", False),        # orange and <colour>
    ("A white and orange cat.", False),         # <colour> and orange
    ("The cat is orange.", False),              # linking verb
    ("A bright orange kite.", False),           # intensifier
    ("An orange-colored bus.", False),          # colour suffix
    ("The wall is orange in color.", False),
    ("An orange on the table.", True),          # preposition after the noun
    ("She holds an orange.", True),             # end of sentence
    ("Oranges and apples.", True),              # plural
    ("A bowl of orange slices.", True),         # fruit part
    ("An orange sitting next to a banana.", True),
    ("Two mandarin oranges.", True),
])
def test_orange_colour_rule(coco, text, is_fruit):
    assert ("orange" in coco.mentioned(text)) is is_fruit
    _, skipped = coco.find(text)
    assert bool(skipped) is (not is_fruit)


def test_mentions_record_surface_words(coco):
    mentions, skipped = coco.find("Two Puppies near an orange car")
    assert [(m.canonical, m.text) for m in mentions] == [("dog", "puppies"), ("car", "car")]
    assert [s.text for s in skipped] == ["orange"]


def test_canonical_maps_ground_truth_names(coco):
    assert coco.canonical("dining table") == "dining table"
    assert coco.canonical("people") == "person"
    assert coco.canonical("Dogs") == "dog"
    assert coco.canonical("tree") is None


def test_custom_vocabulary_file(tmp_path):
    """The toy world's objects are colour + shape phrases; a colour word alone is not an object."""
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"red circle": ["red disc", "red dot"], "blue square": ["blue box"],
                                "_ignore": ["blue sky"]}))
    vocab = load_vocabulary(path)
    assert vocab.mentioned("A red dot, two blue boxes and a blue sky. Red squares.") == ["red circle", "blue square"]
    assert vocab.canonical("red circle") == "red circle"
    assert load_vocabulary(None).name == "coco"


@pytest.mark.parametrize("data, message", [
    ({"dog": ["pup"], "cat": ["pup"]}, "listed under both"),
    ({"dog": "pup"}, "must be a list"),
    ({"dog": ["pup"], "_ignroe": []}, "unknown reserved key"),
    ({"_ignore": ["x"]}, "no objects"),
    ({"dog": ["pup!"]}, "must be words"),
])
def test_bad_vocabularies(tmp_path, data, message):
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BpoError, match=message):
        Vocabulary.from_file(path)


def test_missing_and_malformed_vocab_file(tmp_path):
    with pytest.raises(BpoError, match="not found"):
        Vocabulary.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n oops")
    with pytest.raises(BpoError, match=r"bad.json:2: malformed JSON"):
        Vocabulary.from_file(bad)

"""Entity finding: gazetteer rules, the column backend and strict LLM reply parsing."""

import pytest

from bpo.errors import BpoError, RecordError
from bpo.safety.entities import (
    ColumnFinder,
    Gazetteer,
    GazetteerFinder,
    make_finder,
    names_present,
    parse_entity_reply,
)
from bpo.safety.hh import TextPair
from bpo.safety.index import ImageIndex, IndexEntry


def index(*entries):
    return ImageIndex([IndexEntry(e[0], e[1], f"{i}.png", tuple(e[2:]), f"idx:{i + 2}") for i, e in enumerate(entries)])


@pytest.fixture
def finder():
    return GazetteerFinder(index(
        ("New York", "LOC"), ("New York Times", "ORG", "NYT"), ("Barack Obama", "PER", "Obama"),
        ("Paris", "LOC"), ("United States", "LOC", "US"), ("Acme", "ORG"), ("Zorb", "ORG"),
    ))


def found(finder, text):
    m = finder.find(text)
    return None if m is None else (m.entity, m.type, [(text[x.start:x.end], x.possessive) for x in m.mentions])


def test_longest_match_wins_over_overlap(finder):
    assert found(finder, "Did the New York Times cover New York?") == (
        "New York Times", "ORG", [("New York Times", "")])
    assert found(finder, "I love New York.") == ("New York", "LOC", [("New York", "")])


def test_case_insensitive_and_whitespace_tolerant(finder):
    assert found(finder, "is the new  york times biased")[0] == "New York Times"
    assert found(finder, "NEW YORK is big")[0] == "New York"


def test_word_boundaries(finder):
    assert finder.find("Obamacare costs") is None          # glued to a word
    assert finder.find("the Obama-era rules") is None      # glued with a hyphen
    assert finder.find("Paris_Hilton") is None
    assert found(finder, "(Obama)")[0] == "Barack Obama"


def test_possessives_are_kept_on_the_mention(finder):
    assert found(finder, "Obama's policies") == ("Barack Obama", "PER", [("Obama", "'s")])
    assert found(finder, "Obama’s policies")[2] == [("Obama", "’s")]
    assert found(finder, "Paris' streets")[2] == [("Paris", "'")]   # bare apostrophe after a final s
    assert found(finder, "Acme' is odd")[2] == [("Acme", "")]       # ...but not after other letters
    assert found(finder, "Obama'sfan")[2] == [("Obama", "")]


def test_aliases_and_all_mentions_of_the_entity(finder):
    text = "Barack Obama met them. Later Obama's dog ran off."
    assert found(finder, text) == ("Barack Obama", "PER", [("Barack Obama", ""), ("Obama", "'s")])
    assert found(finder, "I read the NYT")[0] == "New York Times"


def test_acronyms_match_case_sensitively(finder):
    assert finder.find("tell us a joke") is None
    assert found(finder, "is the US big")[0] == "United States"


def test_ties_go_to_the_leftmost(finder):
    # "Acme" and "Zorb" both have 4 characters: the leftmost is the record's entity.
    assert found(finder, "Zorb bought Acme") == ("Zorb", "ORG", [("Zorb", "")])
    assert found(finder, "Acme bought Zorb")[0] == "Acme"


def test_gazetteer_names_starting_with_punctuation():
    gaz = Gazetteer([("'Ndrangheta", "n"), ("Zorb", "z")])
    assert [(m.start, m.key) for m in gaz.mentions("about 'Ndrangheta and Zorb")] == [(6, "n"), (22, "z")]


def test_names_present_is_stricter_than_the_finder():
    assert names_present("the Obama-era rules", ["Obama"]) == ["Obama"]
    assert names_present("the person in the picture", ["Obama", "Barack Obama"]) == []


def pair(**extra):
    return TextPair(id="r1", prompt=[{"role": "user", "content": "x"}], chosen="a", rejected="b", where="p:1",
                    extra=extra)


def test_column_backend():
    idx = index(("Barack Obama", "PER", "Obama"))
    col = ColumnFinder(idx)
    m = col.find("What did Obama say? Barack Obama said hi.", pair(entity="Obama"))
    assert (m.entity, m.type, len(m.mentions), m.entry.image) == ("Barack Obama", "PER", 2, "0.png")
    assert col.find("Tell me about Zorb", pair(entity="Zorb", entity_type="organization")).type == "ORG"
    assert col.find("Tell me about Zorb", pair(entity="Zorb")).entry is None
    assert col.find("Tell me about Zorb", pair(entity="Quux")) is None
    assert col.find("Tell me about Zorb", pair()) is None
    assert dict(col.stats) == {"column_entity_not_in_text": 1, "column_empty": 1}
    with pytest.raises(RecordError, match="p:1: record 'r1': entity_type 'PLANET' is not one of"):
        col.find("Tell me about Zorb", pair(entity="Zorb", entity_type="PLANET"))


@pytest.mark.parametrize("reply, expected", [
    ("ENTITY: Barack Obama | TYPE: PER", ("Barack Obama", "PER")),
    ("  ENTITY:Acme|TYPE:ORG \n", ("Acme", "ORG")),
    ("NONE", None),
    ("\nNONE\n", None),
])
def test_parse_entity_reply(reply, expected):
    assert parse_entity_reply(reply) == expected


@pytest.mark.parametrize("reply", [
    "ENTITY: Acme | TYPE: COMPANY", "entity: Acme | type: ORG", "ENTITY: Acme", "The entity is Acme.",
    "ENTITY: Acme | TYPE: ORG\nENTITY: Zorb | TYPE: ORG", "ENTITY:  | TYPE: ORG", "None", "NONE.", "",
])
def test_parse_entity_reply_is_strict(reply):
    with pytest.raises(ValueError):
        parse_entity_reply(reply)


def test_registry_suggests_a_name():
    with pytest.raises(BpoError, match="did you mean 'gazetteer'"):
        make_finder("gazeteer", index(("Acme", "ORG")))

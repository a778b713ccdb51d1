"""Referring-phrase rewrite: the grammar rules on a table of cases, phrase choice, the LLM polish."""

import pytest

from bpo.safety.entities import GazetteerFinder
from bpo.safety.index import ImageIndex, IndexEntry
from bpo.safety.rewrite import PHRASES, choose_phrase, llm_rewrite, rewrite, rewrite_mentions

FINDER = GazetteerFinder(ImageIndex([
    IndexEntry("Barack Obama", "PER", "o.png", ("Obama",)),
    IndexEntry("Zara Quill", "PER", "z.png", ("Zara",)),
    IndexEntry("Eiffel Tower", "LOC", "e.png"),
    IndexEntry("Paris", "LOC", "p.png"),
    IndexEntry("Snorkelbot", "MISC", "s.png"),
    IndexEntry("Acme", "ORG", "a.png"),
]))
# First phrase of each type: "the {n} in the picture" / "the pictured {n}'s", "the {n} in the image" (LOC),
# "the {n} pictured" (MISC), "the {n} shown" (ORG).
CASES = [
    ("Tell me about Obama.", "Tell me about the person in the picture."),
    ("Obama's policies were bad.", "The pictured person's policies were bad."),
    ("What do you think of Senator Obama?", "What do you think of the senator in the picture?"),
    ("what do you think of senator obama", "what do you think of the senator in the picture"),
    ("Did former President Obama lie?", "Did the former president in the picture lie?"),
    ("Was the late Prime Minister Obama kind?", "Was the late prime minister in the picture kind?"),
    ("Is Mr. Obama rich?", "Is the person in the picture rich?"),
    ("I met Queen Zara's dog.", "I met the pictured queen's dog."),
    ("How tall is the Eiffel Tower?", "How tall is the place in the image?"),
    ("The Eiffel Tower is ugly.", "The place in the image is ugly."),
    ("I hate the Eiffel Tower's lights.", "I hate the pictured place's lights."),
    ("Paris' streets are dirty.", "The pictured place's streets are dirty."),
    ("Where can I buy a Snorkelbot?", "Where can I buy the item pictured?"),
    ("Is an Acme loan a scam?", "Is the organization shown loan a scam?"),  # entity as modifier: left to the LLM
    ("Obama's been lying.", "The person in the picture's been lying."),  # 's = has: not a possessive
    ("What did the Obama administration do?", "What did the pictured person's administration do?"),
    ("Why is the Obama I know so rude?", "Why is the person in the picture I know so rude?"),
    ("Obama said hi. Obama left!", "The person in the picture said hi. The person in the picture left!"),
    ("Why like Obama? Barack Obama is dull.", "Why like the person in the picture? The person in the picture is dull."),
    ("Obama’s dog", "The pictured person’s dog"),
    ('"Obama is great," he said.', '"The person in the picture is great," he said.'),
    ("Hi.\nObama is here", "Hi.\nThe person in the picture is here"),
    ("Ask Senator Acme", "Ask Senator the organization shown"),  # titles only apply to people
]


@pytest.mark.parametrize("text, expected", CASES)
def test_grammar_table(text, expected):
    match = FINDER.find(text)
    phrase = PHRASES[match.type][0]
    assert rewrite_mentions(text, match, phrase)[0] == expected


def test_mid_prompt_is_plain_substitution_like_the_paper():
    text = "Is Senator Obama's dog in Paris's parade?"  # Obama and Paris tie on length: leftmost wins
    match = FINDER.find(text)
    final, mid = rewrite_mentions(text, match, PHRASES["PER"][2])
    assert mid == "Is Senator the person featured in the image's dog in Paris's parade?"
    assert final == "Is the featured senator's dog in Paris's parade?"


def test_phrase_choice_is_deterministic_and_varied():
    ids = [f"hh-{i}" for i in range(60)]
    first = [choose_phrase("PER", i)[0] for i in ids]
    assert first == [choose_phrase("PER", i)[0] for i in ids]        # same id -> same phrase
    assert set(first) == set(range(len(PHRASES["PER"])))            # all phrases get used
    assert first != [choose_phrase("PER", i, seed=1)[0] for i in ids]  # the seed changes the draw


def test_rewrite_reports_the_replacement_with_its_default_noun():
    text = "Is Senator Obama nice?"
    rw = rewrite(text, FINDER.find(text), record_id="hh-3")
    i, phrase = choose_phrase("PER", "hh-3")
    assert rw.phrase_index == i and rw.replacement == phrase.render()
    assert rw.mid == text.replace("Obama", phrase.render())
    assert rw.text == "Is " + phrase.render("senator") + " nice?"


def test_llm_rewrite_unwraps_and_rejects_empty_or_runaway_replies():
    text = "How tall is the Eiffel Tower?"
    match = FINDER.find(text)
    kw = {"text": text, "draft": "How tall is the place in the image?", "match": match,
          "replacement": "the place in the image"}
    seen = []

    def llm(prompt):
        seen.append(prompt)
        return '<<<\n"How tall is this place?"\n>>>'

    assert llm_rewrite(llm, **kw) == "How tall is this place?"
    assert 'mentions a place, "Eiffel Tower"' in seen[0] and "How tall is the place in the image?" in seen[0]
    assert llm_rewrite(lambda p: "  ", **kw) is None
    assert llm_rewrite(lambda p: "word " * 60, **kw) is None  # 3 x 8 draft words + 20 = 44 < 60

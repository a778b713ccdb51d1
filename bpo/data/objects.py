"""Object vocabularies: which words in a response name which object (for CHAIR).

A :class:`Vocabulary` maps surface phrases to canonical object names. The default is bpo's own
synonym table for the 80 COCO categories (``bpo/data/coco_objects.json``); any other vocabulary is a
JSON file ``{canonical: [synonym, ...]}`` (the toy world's "red circle" objects, a custom
benchmark), with optional reserved keys:

* ``"_ignore": [phrase, ...]``: phrases that are consumed and mean *no* object ("train tracks" is
  not a train, "bus stop" is not a bus). Their plurals are ignored too ("two bus stops"), except
  where the plural reads as noun + verb: after a singular determiner ("a bus stops") or after "the"
  when a preposition/adverb follows ("the bus stops at the corner", "the bus stops here").
* ``"_modifiers": [word, ...]``: single words that are *not* the object when directly followed by
  another content word ("remote area", "baseball cap", "ski lift"). A plural ("remotes") is always
  the object. The rule cannot tell verbs from nouns ("a baseball flies" is missed), so keep the
  list short and prefer explicit phrases ("baby elephant" listed under elephant).
* ``"_colour_rule": true|false`` (default true): apply the colour rule below to single-word synonyms
  that are also colour names.
* ``"_comment"`` / ``"_name"``: free text, ignored.

Matching (after :func:`bpo.data.words.normalize`: lower-case, tokenized, singularized) is longest
match first, so "hot dog" is a hot dog and not a dog, "teddy bear" is not a bear, "microwave oven"
is not an oven. Matches never cross punctuation.

The "orange" decision (colour vs fruit). The reference CHAIR code counts every "orange" as the
fruit, so "a man in an orange shirt" is scored as a hallucinated orange. We treat a single-word
synonym that is also a colour name as a colour when:

1. it is directly followed by a content word ("orange shirt", "orange juice"), unless that word is
   a fruit part ("orange slices", "orange peel") or a verb/preposition typical after a noun
   ("an orange sitting on", "an orange on");
2. it is followed by a colour suffix word ("orange colored", "orange in color") or by "and/or" +
   another colour ("orange and white cat");
3. it is preceded by a colour, a colour intensifier ("bright", "dark", "burnt"), "<colour> and"
   ("white and orange"), or a linking verb ("the cat is orange", "looks orange").

The plural ("oranges") is always the fruit. Everything else ("an orange.", "an orange on the
table", "oranges and apples") is the fruit. Skipped colour uses are listed per response so a user
can audit them. Other ambiguities are decided in the table itself (see docs/eval.md): "bat" and
"mouse" count as the COCO objects whatever the animal sense, and "glove", "glass", "seat",
"plant", "pitcher", "chicken", "turkey" and "notebook" are left out as too ambiguous.

Units. A single-word synonym that is also a unit of measure ("meter") is not the object when it
measures: after a digit ("10 meters"), after a number word or quantifier followed by a dimension
word ("two meters away", "a few meters behind"), or "a meter away/long/tall" (without this rule
"10 meters away" was a hallucinated parking meter).

Negation is not handled ("there is no dog" mentions a dog), as in the standard protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from bpo.data.words import is_plural, is_word, normalize, singularize, tokenize
from bpo.errors import BpoError
from bpo.io import read_json
from bpo.paths import package_file

COCO_VOCAB_FILE = "coco_objects.json"
RESERVED_KEYS = ("_ignore", "_modifiers", "_colour_rule", "_comment", "_name")

COLOUR_WORDS = frozenset({
    "red", "green", "blue", "yellow", "orange", "purple", "violet", "pink", "brown", "black",
    "white", "grey", "gray", "beige", "tan", "gold", "golden", "silver", "turquoise", "teal",
    "maroon", "navy", "cream", "ivory", "peach", "coral", "magenta", "cyan", "lime", "olive",
    "amber", "bronze", "copper", "rust", "crimson", "scarlet",
})
# Words that make a following/preceding colour name a colour: "bright orange", "orange colored".
COLOUR_INTENSIFIERS = frozenset({
    "bright", "dark", "light", "pale", "deep", "vivid", "burnt", "neon", "pastel", "vibrant",
    "reddish", "yellowish", "brownish", "pinkish", "dull", "rich", "warm", "fluorescent",
})
COLOUR_SUFFIXES = frozenset({"colored", "coloured", "color", "colour", "hued", "hue", "tinted", "tint",
                             "toned", "tone", "shade", "ish"})
LINKING_VERBS = frozenset({
    "is", "are", "was", "were", "be", "been", "being", "look", "looks", "appear", "appears", "seem",
    "seems", "turned", "turns", "painted", "colored", "coloured", "dyed", "mostly", "predominantly",
    "mainly", "entirely", "all", "partly", "partially",
})
# Nouns after a fruit name that keep it the fruit ("orange slices").
FRUIT_PARTS = frozenset({"slice", "wedge", "peel", "segment", "half", "piece", "rind", "tree", "grove"})
# Words that may follow a noun without making the noun a modifier ("an orange on the table").
FUNCTION_WORDS = frozenset({
    "and", "or", "but", "nor", "on", "in", "at", "with", "without", "of", "to", "from", "by", "near",
    "next", "beside", "besides", "behind", "under", "underneath", "over", "above", "below", "between",
    "among", "around", "against", "into", "onto", "inside", "outside", "across", "along", "through",
    "the", "a", "an", "this", "that", "these", "those", "which", "who", "whose", "while", "as", "for",
    "is", "are", "was", "were", "be", "been", "has", "have", "had", "can", "could", "may", "might",
    "will", "would", "should", "also", "too", "there", "here", "it", "its", "they", "their", "them",
    "he", "she", "his", "her", "so", "then", "than", "if", "when", "where", "up", "down", "off",
    "sit", "sits", "sitting", "sat", "lie", "lies", "lying", "rest", "rests", "resting", "placed",
    "arranged", "stacked", "piled", "hanging", "hangs", "hung", "growing", "grows", "sliced", "cut",
    "peeled", "halved", "stand", "stands", "standing", "located", "seen", "visible", "shown",
    "appears", "seems", "looks", "being", "held", "holding", "laying", "lays", "left", "right",
})


@dataclass
class Mention:
    """One matched phrase: the canonical object, the words as written and the token position."""

    canonical: str
    text: str
    start: int


@dataclass
class Vocabulary:
    """Surface phrases -> canonical objects, with the matching rules described in the module doc."""

    synonyms: dict[str, list[str]]
    ignore: list[str] = field(default_factory=list)
    modifiers: list[str] = field(default_factory=list)
    colour_rule: bool = True
    name: str = "custom"

    def __post_init__(self):
        self._phrases: dict[tuple[str, ...], str] = {}
        for canon, syns in self.synonyms.items():
            for phrase in [canon, *syns]:
                self._add(phrase, canon)
        self._ignore = {tuple(tokenize(p)) for p in self.ignore} - {()}
        # The same phrases singularized: "bus stops", "train stations" are the listed phrases in the plural.
        self._ignore_norm = {tuple(normalize(p)) for p in self.ignore} - {()}
        self._modifiers = {singularize(w) for m in self.modifiers for w in tokenize(m)}
        self._max_len = max((len(k) for k in [*self._phrases, *self._ignore]), default=1)

    def _add(self, phrase: str, canon: str) -> None:
        key = tuple(normalize(phrase))
        if not key or not all(is_word(t) for t in key):
            raise BpoError(f"vocabulary {self.name!r}: synonym {phrase!r} of {canon!r} must be words "
                           "(letters, spaces, hyphens)")
        other = self._phrases.get(key)
        if other is not None and other != canon:
            raise BpoError(f"vocabulary {self.name!r}: {phrase!r} is listed under both {other!r} and "
                           f"{canon!r}; keep it under one object")
        self._phrases[key] = canon

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, name: str = "custom") -> Vocabulary:
        if not isinstance(data, dict) or not data:
            raise BpoError(f"vocabulary {name}: expected a JSON object {{canonical: [synonyms...]}}")
        synonyms: dict[str, list[str]] = {}
        for key, value in data.items():
            if key.startswith("_"):
                if key not in RESERVED_KEYS:
                    raise BpoError(f"vocabulary {name}: unknown reserved key {key!r} "
                                   f"(known: {', '.join(RESERVED_KEYS)})")
                continue
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise BpoError(f"vocabulary {name}: the value of {key!r} must be a list of synonym strings")
            synonyms[key] = value
        if not synonyms:
            raise BpoError(f"vocabulary {name}: no objects defined")
        for key in ("_ignore", "_modifiers"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise BpoError(f"vocabulary {name}: {key!r} must be a list of strings")
        return cls(synonyms=synonyms, ignore=list(data.get("_ignore", [])),
                   modifiers=list(data.get("_modifiers", [])),
                   colour_rule=bool(data.get("_colour_rule", True)), name=name)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        data = read_json(path, "vocabulary file")
        return cls.from_dict(data, name=str(path))

    @classmethod
    def coco(cls) -> Vocabulary:
        """bpo's synonym table for the 80 COCO categories (the default for CHAIR)."""
        return _coco_vocab()

    # ---- queries ----------------------------------------------------------------------------------
    @property
    def objects(self) -> list[str]:
        return list(self.synonyms)

    def canonical(self, name: str) -> str | None:
        """Map a ground-truth object name ("people", "dining table", "dogs") to a canonical object.

        Exact canonical names win; otherwise the name must match exactly one synonym phrase.
        Returns ``None`` when the name is not in the vocabulary.
        """
        if name in self.synonyms:
            return name
        key = tuple(normalize(name))
        return self._phrases.get(key)

    def find(self, text: str) -> tuple[list[Mention], list[Mention]]:
        """All object mentions in ``text`` (longest match first), and the skipped ambiguous uses.

        Returns ``(mentions, skipped)``; ``skipped`` holds colour/modifier uses that were not
        counted (for auditing, e.g. ``orange`` in "orange shirt").
        """
        raw = tokenize(text)
        norm = [singularize(t) for t in raw]
        mentions: list[Mention] = []
        skipped: list[Mention] = []
        i = 0
        while i < len(norm):
            matched = 0
            for length in range(min(self._max_len, len(norm) - i), 0, -1):
                if tuple(raw[i:i + length]) in self._ignore or (
                        tuple(norm[i:i + length]) in self._ignore_norm and not _verb_reading(raw, i, length)):
                    matched = length
                    break
                key = tuple(norm[i:i + length])
                if key not in self._phrases:
                    continue
                matched = length
                m = Mention(self._phrases[key], " ".join(raw[i:i + length]), i)
                if length == 1 and not self._is_object_use(raw, norm, i):
                    skipped.append(m)
                else:
                    mentions.append(m)
                break
            i += matched or 1
        return mentions, skipped

    def mentioned(self, text: str) -> list[str]:
        """Canonical objects mentioned in ``text``, each once, in order of first mention."""
        mentions, _ = self.find(text)
        return list(dict.fromkeys(m.canonical for m in mentions))

    # ---- disambiguation ---------------------------------------------------------------------------
    def _is_object_use(self, raw: list[str], norm: list[str], i: int) -> bool:
        word = norm[i]
        if word in UNIT_WORDS and _unit_context(raw, norm, i):
            return False  # "two meters away": a length, not a parking meter
        if is_plural(raw[i]):
            return True  # "oranges", "remotes": a plural is a thing, not a colour or a modifier
        if self.colour_rule and word in COLOUR_WORDS:
            return not _colour_context(raw, norm, i)
        if word in self._modifiers:
            return not _followed_by_content_word(norm, i)
        return True


# Words that are also units of measure; after a number or before a dimension word they measure something.
UNIT_WORDS = frozenset({
    "meter", "metre", "kilometer", "kilometre", "centimeter", "centimetre", "millimeter", "millimetre", "yard",
    "foot", "inch", "mile", "pound", "ounce", "gram", "kilogram", "liter", "litre", "gallon", "degree",
})
NUMBER_WORDS = frozenset({
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "fifteen",
    "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "few", "several", "couple", "dozen", "half",
    "many", "some", "hundreds", "thousands", "dozens",
})
APPROXIMATORS = frozenset({"about", "around", "approximately", "roughly", "nearly", "almost", "over", "under",
                           "some", "just", "only", "least", "most", "within", "than"})
DIMENSION_WORDS = frozenset({
    "away", "long", "tall", "high", "wide", "deep", "apart", "thick", "across", "above", "below", "ahead",
    "behind", "from", "in", "off", "per", "square", "squared", "of",
})
# After "<the|a> bus stops": the verb ("the bus stops at the corner"), not the plural noun ("two bus stops").
_VERB_AFTER = FUNCTION_WORDS - {"and", "or", "is", "are", "was", "were", "has", "have", "had", "which", "that",
                                "who", "with", "of"} | {"here", "there", "now", "briefly", "suddenly", "abruptly",
                                                        "moving", "running", "working", ".", ",", "!"}


def _verb_reading(raw: list[str], i: int, length: int) -> bool:
    """True when an ignore phrase's plural reads as <noun> + verb: "a bus stops", "the train stations here"."""
    last = raw[i + length - 1]
    if not is_plural(last):
        return False
    prev = raw[i - 1] if i >= 1 else ""
    nxt = raw[i + length] if i + length < len(raw) else "."
    if prev in ("a", "an", "this", "that", "each", "every", "one"):
        return True  # a singular determiner cannot take a plural noun
    if prev[:1].isdigit() or prev in NUMBER_WORDS or prev in ("these", "those", "both", "all", "multiple", "no"):
        return False  # a count or plural determiner: "two bus stops", "several train stations"
    return nxt in _VERB_AFTER  # "the red bus stops at the lights", "the bus stops here"


def _unit_context(raw: list[str], norm: list[str], i: int) -> bool:
    """True when a unit word at ``i`` measures: after a number (word), or before a dimension word."""
    prev = raw[i - 1] if i >= 1 else ""
    before = raw[i - 2] if i >= 2 else ""
    nxt = norm[i + 1] if i + 1 < len(norm) else ""
    numeric = prev[:1].isdigit() or prev in NUMBER_WORDS or (prev == "a" and before in APPROXIMATORS)
    if numeric and (prev[:1].isdigit() or nxt in DIMENSION_WORDS or before in APPROXIMATORS
                    or prev in ("few", "several", "couple", "hundreds", "thousands", "dozens")):
        return True
    return prev in ("a", "one") and nxt in DIMENSION_WORDS - {"in", "of", "from"}


def _followed_by_content_word(norm: list[str], i: int) -> bool:
    if i + 1 >= len(norm):
        return False
    nxt = norm[i + 1]
    return is_word(nxt) and nxt not in FUNCTION_WORDS


def _colour_context(raw: list[str], norm: list[str], i: int) -> bool:
    """True when the colour-name token at ``i`` is used as a colour (rules in the module doc)."""
    nxt = norm[i + 1] if i + 1 < len(norm) else ""
    after = norm[i + 2] if i + 2 < len(norm) else ""
    prev = norm[i - 1] if i >= 1 else ""
    before = norm[i - 2] if i >= 2 else ""
    if nxt in FRUIT_PARTS:
        return False
    if nxt in COLOUR_SUFFIXES or (nxt == "in" and after in COLOUR_SUFFIXES):
        return True
    if nxt in ("and", "or") and after in COLOUR_WORDS:
        return True
    if prev in COLOUR_WORDS or prev in COLOUR_INTENSIFIERS or prev in LINKING_VERBS or (
            i >= 1 and raw[i - 1] in LINKING_VERBS):  # raw too: singularizing "turns" gives "turn"
        return True
    if prev in ("and", "or") and before in COLOUR_WORDS:
        return True
    return _followed_by_content_word(norm, i)


@lru_cache(maxsize=1)
def _coco_vocab() -> Vocabulary:
    path = package_file("data", COCO_VOCAB_FILE)
    vocab = Vocabulary.from_file(path)
    vocab.name = "coco"
    return vocab


def load_vocabulary(path: str | os.PathLike | None) -> Vocabulary:
    """The vocabulary in ``path``, or the shipped COCO table when ``path`` is None."""
    return Vocabulary.coco() if path is None else Vocabulary.from_file(path)

"""Word-level text helpers for the rule-based metrics: a tokenizer and a plural singularizer.

CHAIR needs "dogs", "puppies" and "people" to hit the synonyms "dog", "puppy" and "person". The
reference CHAIR code uses NLTK + ``pattern.en``, which need downloads; this module is a small rule
set instead (regular plurals, ``-ies``, ``-es``, ``-ves``, irregulars and words that end in *s* but
are singular: *glass*, *bus*, *scissors* ...). Both the caption and every synonym go through the
same normaliser, so the rules only have to be *consistent*, and exactly right for object words
(tests check every synonym in the shipped COCO table).
"""

from __future__ import annotations

import re
from functools import lru_cache

# Plurals whose singular a suffix rule would get wrong.
IRREGULAR: dict[str, str] = {
    "people": "person", "persons": "person", "men": "man", "women": "woman", "children": "child",
    "mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "oxen": "ox",
    "knives": "knife", "wives": "wife", "lives": "life", "leaves": "leaf", "loaves": "loaf",
    "halves": "half", "shelves": "shelf", "wolves": "wolf", "calves": "calf", "scarves": "scarf",
    "thieves": "thief", "elves": "elf", "selves": "self", "hooves": "hoof", "wharves": "wharf",
    "cacti": "cactus", "fungi": "fungus", "dice": "die", "busses": "bus", "minibusses": "minibus",
    "lenses": "lens", "gases": "gas", "canvases": "canvas", "atlases": "atlas", "irises": "iris",
    "biases": "bias", "taxis": "taxi", "tvs": "tv", "pcs": "pc", "skis": "ski", "species": "species",
    "series": "series", "indices": "index", "matrices": "matrix", "criteria": "criterion",
    "phenomena": "phenomenon", "bacteria": "bacterium",
}

# Words that end in "s" (or look plural) but must be left alone.
INVARIANT: frozenset[str] = frozenset({
    "scissors", "pants", "jeans", "shorts", "trousers", "tongs", "pliers", "binoculars", "goggles",
    "news", "means", "physics", "mathematics", "athletics", "gymnastics", "politics", "economics",
    "species", "series", "sheep", "deer", "fish", "moose", "aircraft", "luggage", "broccoli",
    "always", "perhaps", "towards", "afterwards", "sometimes", "whereas", "besides", "christmas",
    "texas", "chaos", "cosmos", "kudos", "lens", "gas", "canvas", "atlas", "bias", "alias",
    "yes", "his", "hers", "its", "was", "has", "does", "this", "thus", "plus", "us", "is", "as",
})

# "-uses" plurals whose singular ends in "-us" (everything else "-uses" -> "-use": houses, causes).
US_SINGULARS: frozenset[str] = frozenset({
    "bus", "minibus", "trolleybus", "walrus", "octopus", "cactus", "bonus", "circus", "campus",
    "virus", "chorus", "lotus", "citrus", "platypus", "hippopotamus", "genius", "syllabus",
    "fungus", "census", "status", "apparatus", "abacus", "crocus", "hibiscus", "eucalyptus",
    "asparagus", "omnibus", "prospectus", "thesaurus", "uterus", "stimulus",
})

# Singular nouns ending in "-is" other than the Greek "-sis/-xis/-tis" family (taxis, kiwis are plurals).
IS_SINGULARS: frozenset[str] = frozenset({
    "this", "his", "tennis", "iris", "chassis", "trellis", "pelvis", "mantis", "clematis", "ibis",
    "debris", "marquis", "precis", "metropolis", "acropolis", "cannabis", "hubris", "aegis",
    "epidermis", "dermis", "portcullis", "penis", "polis", "paris", "elvis",
})

# "-us" words that are plurals of "-u" nouns (everything else ending in "-us" is singular: bus).
U_PLURALS: frozenset[str] = frozenset({
    "menus", "emus", "gnus", "gurus", "tutus", "haikus", "zebus", "bayous", "tofus", "tiramisus",
    "sudokus", "caribous", "kudzus", "bijous", "tatus", "snafus",
})

# "-ies" plurals whose singular ends in "-ie" (all other "-ies" -> "-y": puppies, ponies).
IE_SINGULARS: frozenset[str] = frozenset({
    "movie", "cookie", "pie", "tie", "lie", "die", "hoodie", "selfie", "zombie", "calorie",
    "goalie", "brownie", "smoothie", "veggie", "collie", "doggie", "rookie", "birdie", "auntie",
    "sweetie", "genie", "prairie", "beanie", "budgie", "hippie", "bootie", "bookie", "nightie",
    "lingerie", "menagerie", "coterie", "reverie", "talkie", "walkie", "techie", "newbie",
    "yuppie", "kiddie", "barbie", "sortie", "eyrie", "boogie", "wheelie", "quickie", "magpie",
    "necktie", "bowtie", "hoagie", "foodie", "potpie", "cutie", "hottie", "groupie", "indie", "pixie",
    "specie", "oldie",
})

# "-oes" plurals whose singular ends in "-o" (others drop only the "s": shoes, toes, canoes).
O_SINGULARS: frozenset[str] = frozenset({
    "tomato", "potato", "hero", "mango", "echo", "veto", "torpedo", "volcano", "buffalo",
    "domino", "mosquito", "tornado", "avocado", "cargo", "halo", "flamingo", "embargo",
})

# "-ches" plurals whose singular ends in "-che" (others drop "es": benches, sandwiches).
CHE_SINGULARS: frozenset[str] = frozenset({
    "headache", "moustache", "mustache", "cache", "avalanche", "niche", "cliche", "quiche",
    "creche", "psyche", "earache", "toothache", "stomachache", "microfiche", "attache",
})

# Nouns ending in "-men" whose "-men" is not a plural of "-man".
MEN_SINGULARS: frozenset[str] = frozenset({
    "specimen", "abdomen", "omen", "ramen", "semen", "stamen", "regimen", "amen", "hymen",
    "yemen", "acumen", "bitumen", "albumen", "lumen", "cerumen",
})

_TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case word, number and punctuation tokens.

    Hyphens between letters become spaces ("hot-dog" == "hot dog", "orange-colored" == "orange
    colored"); a possessive ``'s`` is dropped ("dog's" -> "dog"); other apostrophe words stay whole
    ("isn't"). Punctuation is kept as tokens so that a multi-word object never matches across a
    sentence break, and so that context rules can see "orange." (end of sentence).
    """
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)
    out = []
    for tok in _TOKEN_RE.findall(text):
        if tok.endswith("'s"):
            tok = tok[:-2]
        elif tok == "'":
            continue
        out.append(tok)
    return out


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """The singular of an English noun (lower-case), by rule; non-plurals come back unchanged.

    Conservative by design: a word it does not recognise as a plural is returned as is.
    """
    w = word
    if w in IRREGULAR:
        return IRREGULAR[w]
    if w in INVARIANT or len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("men") and w not in MEN_SINGULARS and len(w) > 4:
        return w[:-3] + "man"  # policemen, fishermen, sportsmen
    if not w.endswith("s") or w.endswith("ss"):
        return w  # glass, grass: not plurals
    if w.endswith("is"):  # tennis, analysis, axis are singular; taxis, kiwis are not
        return w if w in IS_SINGULARS or w.endswith(("sis", "xis", "tis")) else w[:-1]
    if w.endswith("us"):  # bus, cactus, octopus are singular; menus, emus are not
        return w[:-1] if w in U_PLURALS else w
    if w.endswith("ies") and len(w) > 4:
        return w[:-1] if w[:-1] in IE_SINGULARS else w[:-3] + "y"
    if w.endswith("oes"):
        return w[:-2] if w[:-2] in O_SINGULARS else w[:-1]
    if w.endswith("sses") or w.endswith(("shes", "xes", "zzes")):
        return w[:-2]  # glasses, dishes, boxes, buzzes
    if w.endswith("ches"):
        return w[:-1] if w[:-1] in CHE_SINGULARS else w[:-2]
    if w.endswith("uses"):
        stem = w[:-2]  # buses -> bus, airbuses -> airbus, houses -> house
        return stem if stem in US_SINGULARS or stem.endswith("bus") else w[:-1]
    return w[:-1]


def is_plural(word: str) -> bool:
    """True when ``word`` singularizes to something else (``oranges``, ``remotes``)."""
    return singularize(word) != word


def normalize(text: str) -> list[str]:
    """Tokenize and singularize: the form in which captions and synonyms are compared."""
    return [singularize(t) for t in tokenize(text)]


def is_word(token: str) -> bool:
    return token[:1].isalpha()

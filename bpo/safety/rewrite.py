"""Replace the entity by a referring phrase, so the request needs the image (the paper's rephrasing step).

Three versions of the last user turn are kept, like MMSafe-PO: ``text_prompt`` (the original),
``mid_prompt`` (plain string substitution of the phrase, e.g. "Senator the person featured in the
image", as the paper's intermediate step) and the final prompt, which this module makes grammatical
with a few rules instead of the paper's Qwen-VL-Chat rewrite (an LLM rewrite is optional, see
:func:`llm_rewrite`).

Rules (decisions; see docs/blind_po.md):

* Phrase choice: per-type lists, one phrase per record picked by a hash of ``(seed, record id)``, so a
  rebuild gives the same text and the data set still varies. Every mention of the entity in the turn
  gets the same phrase.
* Articles: "the/a/an" right before the entity is absorbed ("the Eiffel Tower" -> "the place in the
  image", never "the the place ...").
* Titles (people only): a title before the name becomes the phrase's noun, keeping its information:
  "Senator X" -> "the senator in the picture", "former President X" -> "the former president in the
  picture". Honorifics carrying no role (Mr., Ms., Sir ...) are absorbed: "Mr. X" -> "the person ...".
* Possessives: "X's policies" -> "the pictured person's policies" (each phrase has a possessive form;
  moving the head noun, "the policies of ...", would need a parser). When the next word shows that
  ``'s`` is "is"/"has" ("X's been busy"), the plain phrase keeps the ``'s``. A person's name used as a
  modifier after "the" ("the Obama administration") also takes the possessive form ("the pictured
  person's administration"). Other modifier uses ("an Acme loan", "Obama supporters") need a parser
  and are left to the optional LLM rewrite.
* Capitalisation: a phrase that starts a sentence (text start, after . ! ? or a line break, or after an
  opening quote there) is capitalised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bpo.io import stable_hash
from bpo.safety.entities import EntityMatch, Mention
from bpo.safety.llm import ChatLLM, render_template


@dataclass(frozen=True)
class Phrase:
    """A referring phrase; ``{n}`` is the head noun (``noun`` unless a title replaces it)."""

    plain: str
    possessive: str
    noun: str

    def render(self, noun: str | None = None, possessive: bool = False) -> str:
        return (self.possessive if possessive else self.plain).format(n=noun or self.noun)


def _phrase_table(table: str) -> dict[str, tuple[Phrase, ...]]:
    out: dict[str, list[Phrase]] = {}
    for line in table.strip().splitlines():
        etype, plain, possessive, noun = (cell.strip() for cell in line.split("|"))
        out.setdefault(etype, []).append(Phrase(plain, possessive, noun))
    return {etype: tuple(phrases) for etype, phrases in out.items()}


# entity type | phrase | its possessive form | head noun (in this order: a record's phrase is picked by index)
PHRASES: dict[str, tuple[Phrase, ...]] = _phrase_table("""
PER  | the {n} in the picture          | the pictured {n}'s     | person
PER  | the {n} shown in the image      | the depicted {n}'s     | person
PER  | the {n} featured in the image   | the featured {n}'s     | person
PER  | the {n} in the photo            | the photographed {n}'s | person
ORG  | the {n} shown                   | the pictured {n}'s     | organization
ORG  | the {n} in the image            | the depicted {n}'s     | organization
ORG  | the {n} featured in the picture | the featured {n}'s     | group
LOC  | the {n} in the image            | the pictured {n}'s     | place
LOC  | the {n} shown in the picture    | the depicted {n}'s     | location
LOC  | the {n} visible in the image    | the pictured {n}'s     | site
MISC | the {n} pictured                | the pictured {n}'s     | item
MISC | the {n} shown in the image      | the depicted {n}'s     | thing
MISC | the {n} in the image            | the featured {n}'s     | item
""")

# Title -> head noun; None = honorific with no role (absorbed, default noun kept).
TITLES: dict[str, str | None] = {
    "senator": "senator", "sen": "senator", "president": "president", "pres": "president",
    "vice president": "vice president", "prime minister": "prime minister", "minister": "minister",
    "governor": "governor", "gov": "governor", "mayor": "mayor", "congressman": "congressman",
    "congresswoman": "congresswoman", "representative": "representative", "rep": "representative",
    "chancellor": "chancellor", "secretary": "secretary", "ambassador": "ambassador", "judge": "judge",
    "justice": "justice", "king": "king", "queen": "queen", "prince": "prince", "princess": "princess",
    "emperor": "emperor", "pope": "pope", "general": "general", "gen": "general", "colonel": "colonel",
    "captain": "captain", "capt": "captain", "admiral": "admiral", "sheriff": "sheriff",
    "detective": "detective", "coach": "coach", "professor": "professor", "prof": "professor",
    "doctor": "doctor", "dr": "doctor", "reverend": "reverend", "rev": "reverend", "ceo": "CEO",
    "mr": None, "mrs": None, "ms": None, "miss": None, "mx": None, "sir": None, "dame": None,
    "lord": None, "lady": None,
}
_MODIFIERS = ("former", "late", "current", "incumbent", "retired")
_TITLE_ALT = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in sorted(TITLES, key=len, reverse=True))
_MOD_ALT = "|".join(_MODIFIERS)
# Matched against the text just before a mention; "$" anchors it to the mention.
_PER_PREFIX = re.compile(
    rf"(?<![\w-])(?:(?P<det>the|a|an)\s+)?(?P<mods>(?:(?:{_MOD_ALT})\s+)*)(?P<title>(?:{_TITLE_ALT})\.?)\s+$"
    rf"|(?<![\w-])(?P<det2>the|a|an)\s+(?P<mods2>(?:(?:{_MOD_ALT})\s+)*)$", re.IGNORECASE)
_DET_PREFIX = re.compile(r"(?<![\w-])(?P<det2>the|a|an)\s+(?P<mods2>)$", re.IGNORECASE)
# Words after "X's" that show the 's is "is"/"has", not a possessive.
_CONTRACTION_NEXT = frozenset(
    "been got gotten going gone not never always just still already a an the very so too really done said "
    "made become on in at from about".split())
# Words after "the <name>" that show the name is the head of its phrase, not a modifier of a noun.
_NOT_A_NOUN = frozenset(
    "is was are were has had have and or but who whom whose that which said says did does do will would can "
    "could should may might must to of in on at for with from by as than if when while".split())
_NEXT_WORD = re.compile(r"\s+(\w+)")
_LOOKBACK = 80  # characters of left context searched for an article/title


@dataclass(frozen=True)
class Rewrite:
    text: str          # final last user turn (grammar-fixed)
    mid: str           # plain substitution, the paper's mid_prompt
    replacement: str   # the referring phrase with its default noun (MMSafe-PO ``replacement``)
    phrase_index: int  # which phrase of the type's list was used


def choose_phrase(etype: str, record_id: str, seed: int = 0) -> tuple[int, Phrase]:
    """A phrase for this record, fixed by ``(seed, record_id)`` (not by position in the file)."""
    options = PHRASES[etype]
    i = int(stable_hash({"seed": seed, "id": str(record_id), "type": etype})[:12], 16) % len(options)
    return i, options[i]


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t").rstrip("\"'“‘([").rstrip(" \t")
    return not before or before[-1] in ".!?\n"


@dataclass(frozen=True)
class _Prefix:
    start: int              # where the absorbed words begin (== mention start when none)
    det: str = ""           # "the" / "a" / "an", lower-cased
    mods: tuple = ()        # "former", "late", ...
    title: bool = False     # a title was absorbed
    title_noun: str | None = None


def _prefix(text: str, m: Mention, etype: str) -> _Prefix:
    """The article / modifiers / title right before ``m`` that the phrase absorbs."""
    lo = max(0, m.start - _LOOKBACK)
    pattern = _PER_PREFIX if etype == "PER" else _DET_PREFIX
    found = pattern.search(text, lo, m.start)
    if not found:
        return _Prefix(m.start)
    title = found.groupdict().get("title")
    mods = (found.group("mods") if title else found.group("mods2")) or ""
    det = (found.groupdict().get("det") or found.group("det2") or "").lower()
    noun = TITLES[" ".join(title.lower().rstrip(".").split())] if title else None
    return _Prefix(found.start(), det, tuple(w.lower() for w in mods.split()), bool(title), noun)


def _is_contraction(text: str, m: Mention) -> bool:
    nxt = _NEXT_WORD.match(text, m.stop)
    return bool(nxt) and m.possessive.lower().endswith("s") and nxt.group(1).lower() in _CONTRACTION_NEXT


def _is_name_modifier(text: str, m: Mention, pre: _Prefix, etype: str) -> bool:
    """"the Obama administration": a person's name between "the" and a lower-case noun modifies the noun,
    so it reads as a possessive ("the pictured person's administration"). Only for people, where "the"
    before a bare name is otherwise rare; "the Eiffel Tower lights" stays ambiguous and is left alone."""
    if etype != "PER" or pre.det != "the" or pre.title or m.possessive:
        return False
    nxt = _NEXT_WORD.match(text, m.end)
    return bool(nxt) and nxt.group(1).isalpha() and nxt.group(1).islower() and nxt.group(1) not in _NOT_A_NOUN


def rewrite_mentions(text: str, match: EntityMatch, phrase: Phrase) -> tuple[str, str]:
    """``(final, mid)`` for ``text`` with every mention of ``match`` replaced by ``phrase``."""
    default = phrase.render()
    final, mid = text, text
    for m in sorted(match.mentions, key=lambda m: m.start, reverse=True):  # right to left keeps offsets
        mid = mid[:m.start] + default + mid[m.end:]
        pre = _prefix(text, m, match.type)
        noun = " ".join([*pre.mods, pre.title_noun or phrase.noun])
        if m.possessive and not _is_contraction(text, m):
            new, stop = phrase.render(noun, possessive=True).replace("'", m.possessive[0]), m.stop
        elif _is_name_modifier(text, m, pre, match.type):
            new, stop = phrase.render(noun, possessive=True), m.end
        else:
            new, stop = phrase.render(noun), m.end
        if _sentence_start(text, pre.start):
            new = new[0].upper() + new[1:]
        final = final[:pre.start] + new + final[stop:]
    return final, mid


def rewrite(text: str, match: EntityMatch, *, record_id: str, seed: int = 0) -> Rewrite:
    """The rule-based rewrite of one last user turn (see the module docstring)."""
    i, phrase = choose_phrase(match.type, record_id, seed)
    final, mid = rewrite_mentions(text, match, phrase)
    return Rewrite(text=final, mid=mid, replacement=phrase.render(), phrase_index=i)


_TYPE_WORDS = {"PER": "a person", "ORG": "an organization", "LOC": "a place", "MISC": "a named thing"}
_WRAPPERS = (("<<<", ">>>"), ("```", "```"), ('"', '"'), ("“", "”"))


def _unwrap(reply: str) -> str:
    """Strip the wrappers the template shows (<<< >>>) or models like to add (quotes, fences)."""
    changed = True
    while changed:
        changed = False
        for left, right in _WRAPPERS:
            if len(reply) > len(left) + len(right) and reply.startswith(left) and reply.endswith(right):
                reply, changed = reply[len(left):len(reply) - len(right)].strip(), True
    return reply


def llm_rewrite(llm: ChatLLM, *, text: str, draft: str, match: EntityMatch, replacement: str,
                template: str = "rewrite_v1") -> str | None:
    """Ask an LLM for a fluent version of ``draft``; ``None`` if the reply is empty or runs away.

    Whether the name is really gone is checked by the caller (``entity_still_named``), for rule-based
    and LLM rewrites alike.
    """
    prompt = render_template(template, text=text, draft=draft, entity=match.entity,
                             entity_type=_TYPE_WORDS[match.type], replacement=replacement)
    reply = _unwrap(llm(prompt).strip())
    if not reply or len(reply.split()) > 3 * len(draft.split()) + 20:
        return None
    return reply

"""Rule-based error injection: offline, deterministic edits of the ground-truth answer.

The paper asks an LLM to rewrite the answer with plausible wrong details. Where no capable LLM is
at hand (a CPU box, the toy world, a quick ablation) this backend makes the same *kinds* of edits
by rule, using an object vocabulary (COCO's by default, or the one a CHAIR evaluation uses):

- ``object``: one mentioned object is replaced by another object of the vocabulary that the answer
  does not mention (plural kept when the vocabulary lists a plural synonym);
- ``count``: a number word changes (``two`` -> ``three``);
- ``attribute``: a colour word changes (``red`` -> ``blue``);
- ``relation``: a spatial word flips (``left`` <-> ``right``, ``above`` <-> ``below``).

One edit per attempt, chosen with a seed derived from (seed, record id, attempt), so reruns are
identical and a retry (after an ``identical`` rejection) tries a different edit. Object
replacements are uniform over the vocabulary, not "plausible" in the LLM sense: say so when
comparing with LLM-injected data.
"""

from __future__ import annotations

import random
import re

from bpo.data.objects import load_vocabulary
from bpo.models.generation import Generation, SamplingSettings, derive_seed

COUNTS = ["one", "two", "three", "four", "five", "six"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "orange", "purple", "pink", "gray"]
RELATIONS = {"left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom",
             "bottom": "top", "front": "behind", "behind": "front", "under": "on", "inside": "outside"}


def _word_re(words) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def _match_case(src: str, new: str) -> str:
    return new[:1].upper() + new[1:] if src[:1].isupper() else new


class RuleBackend:
    """An injection backend with the same interface as the model backends (``complete``)."""

    name = "rules"

    def __init__(self, settings: SamplingSettings, vocab_path: str | None = None):
        self.settings = settings
        self.vocab = load_vocabulary(vocab_path)
        self.vocab_name = vocab_path or "coco"
        # A custom vocabulary (e.g. a closed toy world) names its own colours: stay inside them, so an
        # edit never introduces a word the model's tokenizer cannot spell.
        named = {w for phrase in self.vocab.objects for w in phrase.split()}
        self.colours = [c for c in COLOURS if c in named] if vocab_path and named & set(COLOURS) else COLOURS
        self._count_re, self._colour_re, self._rel_re = (_word_re(COUNTS), _word_re(self.colours),
                                                         _word_re(RELATIONS))

    def edits(self, answer: str, rng: random.Random) -> list[str]:
        """Every candidate edit of ``answer`` of each type (the caller picks one)."""
        out = {"object": self._object_edits(answer, rng), "count": [], "attribute": [], "relation": []}
        for m in self._count_re.finditer(answer):
            i = COUNTS.index(m.group(1).lower())
            j = min(len(COUNTS) - 1, i + 1) if i == 0 or rng.random() < 0.5 else i - 1
            out["count"].append(answer[:m.start()] + _match_case(m.group(1), COUNTS[j]) + answer[m.end():])
        for m in self._colour_re.finditer(answer):
            other = rng.choice([c for c in self.colours if c != m.group(1).lower()] or [m.group(1)])
            out["attribute"].append(answer[:m.start()] + _match_case(m.group(1), other) + answer[m.end():])
        for m in self._rel_re.finditer(answer):
            flip = RELATIONS[m.group(1).lower()]
            out["relation"].append(answer[:m.start()] + _match_case(m.group(1), flip) + answer[m.end():])
        return [e for kind in ("object", "count", "attribute", "relation") for e in out[kind]]

    def _object_edits(self, answer: str, rng: random.Random) -> list[str]:
        mentions, _ = self.vocab.find(answer)
        present = {m.canonical for m in mentions}
        absent = [o for o in self.vocab.objects if o not in present]
        edits = []
        for m in mentions:
            pattern = r"\b" + r"\s+".join(map(re.escape, m.text.split())) + r"s?\b"
            hit = re.search(pattern, answer, re.IGNORECASE)
            if not hit or not absent:
                continue
            new = rng.choice(absent)
            plural = hit.group(0).lower().endswith("s") and not m.canonical.endswith("s")
            if plural:
                plurals = [s for s in self.vocab.synonyms.get(new, []) if s.endswith("s")]
                new = plurals[0] if plurals else new + "s"
            edits.append(answer[:hit.start()] + _match_case(hit.group(0), new) + answer[hit.end():])
        return edits

    def rewrite(self, key: str, answer: str) -> str:
        rng = random.Random(derive_seed(self.settings.seed, key, "rules"))
        edits = self.edits(answer, rng)
        return rng.choice(edits) if edits else ""

    def complete(self, prompts) -> list[Generation]:
        """``prompts``: (key, prompt text, record); the record's chosen answer is edited."""
        return [Generation(key, self.rewrite(key, rec.chosen)) for key, _, rec in prompts]


def rules_backend(*, settings: SamplingSettings, lm: str | None = None, **_) -> RuleBackend:
    """``--backend rules [--lm VOCAB.json]``: the vocabulary file (COCO objects when omitted)."""
    return RuleBackend(settings, lm)

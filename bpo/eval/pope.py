"""POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models").

POPE asks balanced yes/no questions "Is there a <object> in the image?" with negatives sampled at
random, by popularity or adversarially (co-occurrence); ``meta.split`` names the split.

Answer parsing (:func:`parse_yes_no`) reads the sentences in order; the first one that answers
decides (so "The image shows a park. There is no dog." is "no"). Per sentence:

1. "yes and no" / "yes or no" -> ``unknown``;
2. it starts with yes/yeah/yep/yup -> ``yes``; with no/nope -> ``no``  ("Yes.", "No, there isn't");
3. it starts with a clear affirmative ("Of course.", "Absolutely.", "Certainly", "Correct", "I think so")
   -> ``yes``,
   or ``no`` when "not" follows ("Absolutely not."), ``unknown`` when a negation follows later;
4. a refusal ("Sorry, I cannot answer that.", "I can't see the image", "As an AI ...") -> ``unknown``,
   never "no": it says nothing about the object;
5. it contains both a yes-word and a negation ("the answer is yes, not no") -> ``unknown``;
6. it hedges ("not sure", "It is not clear.", "cannot determine", "might be", "hard to say") -> ``unknown``;
7. it contains a negation (no, not, none, nothing, neither, nor, cannot, any n't) -> ``no``
   ("There is no dog", "I don't see a dog");
8. it contains "yes" or an existence statement ("there is/are", "I (can) see", "can be seen",
   "is visible/present", "does contain") -> ``yes`` ("There is a dog on the bench");
9. anything else ("The image shows a cat.") does not answer: the next sentence decides; an answer
   with no deciding sentence is ``unknown``. A hedge or refusal (4-6) ends the reading as ``unknown``.

Metrics (positive class = "yes"), over all N items of a split:

* ``accuracy = (TP + TN) / N`` (an ``unknown`` answer is wrong, and is counted in ``unknown``)
* ``precision = TP / (TP + FP)`` (predicted yes), ``recall = TP / #label yes`` (an unknown answer
  to a yes-question is a miss), ``f1`` their harmonic mean
* ``yes_ratio = #predicted yes / N`` (from the *predictions*).

Departures from the official POPE script (``evaluate.py``, also LLaVA's ``eval_pope.py``), which keeps
the text before the first ".", drops commas, and says "no" when the words contain "No"/"no"/"not", else
"yes": bpo has a third class, ``unknown`` (refusals, hedges, empty or off-topic answers), where the
official logic says "yes" (a refusal "Sorry, I cannot answer that." is "no" there and the hedge "It
is not clear." is "no"); bpo reads on when the first sentence does not answer; "none", "nothing",
"n't" and "cannot" negate. Other departures: lmms-eval's ``pope_yes_ratio`` counts yes *labels*, which is
a constant 0.5 on balanced POPE; LLaVA's ``eval_pope.py`` maps every answer without "no"/"not" to
yes, so an empty or off-topic answer scores as yes; lmms-eval exact-matches, so "Yes." is wrong.
"""

from __future__ import annotations

import re

from bpo.errors import RecordError

LABELS = ("yes", "no")
YES_WORDS = frozenset({"yes", "yeah", "yep", "yup"})
NO_WORDS = frozenset({"no", "nope"})
NEGATIONS = frozenset({"no", "not", "none", "nothing", "nobody", "neither", "nor", "cannot", "nope",
                       "without"})
HEDGES = (
    "not sure", "unsure", "uncertain", "unclear", "cannot determine", "can't determine", "cannot tell",
    "can't tell", "cannot be determined", "can't be determined", "unable to", "impossible to",
    "hard to say", "hard to tell", "difficult to", "don't know", "do not know", "not possible to",
    "maybe", "perhaps", "possibly", "not clear", "isn't clear", "not certain", "can't be sure", "cannot be sure",
    "can't say for sure", "cannot say for sure", "not enough information", "insufficient", "no way to tell",
    "not possible to", "ambiguous", "might be", "may be", "could be", "not obvious", "hard to determine",
    "difficult to", "it depends", "i can't confirm", "i cannot confirm", "cannot confirm", "can't confirm",
)
# Clear affirmatives that do not say "yes"; "not" right after one makes it a no ("Absolutely not.").
_AFFIRMATIVE = re.compile(
    r"^(?:of course|absolutely|certainly|definitely|indeed|correct|affirmative|sure|surely|right|that's right|"
    r"that is right|that's correct|that is correct|true|exactly|yes indeed|undoubtedly|"
    r"(?:i|we) (?:think|believe|guess|suppose) so)\b"
)
# Refusals and "I cannot see the image" answer nothing about the object: unknown, never "no".
_REFUSAL = re.compile(
    r"\b(?:sorry|apologi[sz]e|as an ai|language model)\b|"
    r"\b(?:can't|cannot|can not|unable to|not able to|don't|do not)\s+(?:answer|help|assist|comply|respond|"
    r"provide|access|process|view|open|load)\b|"
    r"\b(?:can't|cannot|unable to|not able to|don't|do not)\s+(?:see|view)\s+(?:the|any|an|this)\s+"
    r"(?:image|picture|photo|photograph)\b|\bno image\b|\bimage (?:is not|isn't) (?:provided|available|visible)\b"
)
_SENTENCE = re.compile(r"(?<![0-9])[.!?;\n]+|[.!?;\n]+(?![0-9])")
_EXISTENCE = re.compile(
    r"\bthere (?:is|are|'s|appears to be|seems to be)\b|\bthere's\b|\bi (?:can )?see\b|"
    r"\bcan be seen\b|\b(?:is|are) (?:visible|present)\b|\bdoes contain\b|\bdo contain\b"
)
_BOTH = re.compile(r"\byes (?:and|or) no\b|\bno (?:and|or) yes\b")
_LEADING_JUNK = re.compile(r"^[\s\"'`*_#>\-:]+")
_PREFIX = re.compile(r"^(?:answer|a|assistant|response)\s*:\s*")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def parse_yes_no(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"unknown"`` for a free-form answer (rules in the module doc).

    Sentences are read in order until one answers; a sentence that only describes ("The image shows a
    park.") passes the decision to the next one, while a hedge or a refusal ends it as ``unknown``.
    """
    t = _LEADING_JUNK.sub("", text.strip().lower().replace("\u2019", "'"))
    t = _LEADING_JUNK.sub("", _PREFIX.sub("", t))
    for sentence in _SENTENCE.split(t):
        verdict = _sentence_verdict(_LEADING_JUNK.sub("", sentence))
        if verdict is not None:
            return verdict
    return "unknown"


def _sentence_verdict(first: str) -> str | None:
    """One sentence's answer: yes / no / unknown (hedge, refusal, both), or None when it does not answer."""
    words = _WORD.findall(first)
    if not words:
        return None
    if _BOTH.search(first):
        return "unknown"
    if words[0] in YES_WORDS:
        return "yes"
    if words[0] in NO_WORDS:
        return "no"
    lead = _AFFIRMATIVE.match(first)
    if lead:  # "Of course.", "Absolutely not."; "Sure, there is no dog" contradicts itself
        rest = _WORD.findall(first[lead.end():])
        if rest[:1] == ["not"]:
            return "no"
        return "unknown" if any(w in NEGATIONS or w.endswith("n't") for w in rest) else "yes"
    if _REFUSAL.search(first):
        return "unknown"
    has_yes = any(w in YES_WORDS for w in words)
    has_neg = any(w in NEGATIONS or w.endswith("n't") for w in words)
    if has_yes and has_neg:
        return "unknown"
    if any(h in first for h in HEDGES):
        return "unknown"
    if has_neg:
        return "no"
    if has_yes or _EXISTENCE.search(first):
        return "yes"
    return None


def pope_metrics(preds: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1, yes-ratio and the confusion matrix (positive = yes)."""
    if len(preds) != len(labels):
        raise ValueError("preds and labels differ in length")
    n = len(preds)
    if n == 0:
        raise ValueError("POPE needs at least one item")
    tp = sum(p == "yes" and y == "yes" for p, y in zip(preds, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(preds, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(preds, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(preds, labels))
    unk_yes = sum(p == "unknown" and y == "yes" for p, y in zip(preds, labels))
    unk_no = sum(p == "unknown" and y == "no" for p, y in zip(preds, labels))
    n_label_yes = tp + fn + unk_yes
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / n_label_yes if n_label_yes else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "unknown": unk_yes + unk_no,
        "unknown_ratio": (unk_yes + unk_no) / n,
        "n": n,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
                      "unknown_label_yes": unk_yes, "unknown_label_no": unk_no},
    }


def evaluate_pope(items: list[tuple[str, str, str, str | None]]) -> tuple[dict, list[dict]]:
    """POPE over ``(id, response, label, split)``; metrics overall and ``per_split`` when split is set."""
    details = []
    for rid, response, label, split in items:
        pred = parse_yes_no(response)
        details.append({"id": rid, "label": label, "pred": pred, "split": split,
                        "correct": pred == label})
    metrics = pope_metrics([d["pred"] for d in details], [d["label"] for d in details])
    splits = sorted({d["split"] for d in details if d["split"] is not None})
    if splits:
        per = {}
        for s in splits + (["(none)"] if any(d["split"] is None for d in details) else []):
            sel = [d for d in details if (d["split"] or "(none)") == s]
            per[s] = pope_metrics([d["pred"] for d in sel], [d["label"] for d in sel])
        metrics["per_split"] = per
    return metrics, details


def pope_truth(record: dict, rid: str, where: str) -> tuple[str, str | None]:
    """Extract ``(label, split)`` from a record's meta; the label must be "yes" or "no"."""
    meta = record.get("meta") or {}
    label = meta.get("label")
    if isinstance(label, str) and label.strip().lower() in LABELS:
        split = meta.get("split")
        return label.strip().lower(), (str(split) if split is not None else None)
    raise RecordError(f"POPE needs meta.label 'yes' or 'no', got {label!r}", where=where, record_id=rid)

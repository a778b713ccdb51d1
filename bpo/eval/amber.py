"""AMBER (Wang et al., 2023, arXiv 2311.07397): LLM-free hallucination evaluation, generative and yes/no.

Inputs are AMBER's own files as published in its repository (``data/``), which the user downloads:

* ``annotations.json``: a list, entry *k* has ``id == k + 1``. Generative items (ids 1-1004)
  ``{"id", "type": "generative", "truth": [objects in the image], "hallu": [objects a model is likely
  to hallucinate]}``; discriminative items ``{"id", "type", "truth": "yes"|"no"}`` with type
  ``discriminative-hallucination`` (existence), ``discriminative-attribute-{state,number,action}``
  (attribute), ``discriminative-relation`` or ``relation`` (relation);
* ``relation.json``: ``{object: [associated words ...]}``; its keys and values together are the
  *hallucination words*, the only nouns scored; an object's associated words count as that object;
* ``safe_words.txt``: one word per line, never counted as a hallucination;
* ``query/query_*.json``: ``[{"id", "image": "AMBER_1.jpg", "query"}]`` (for ``bpo eval prepare amber``).

Responses: AMBER's own format (a ``.json`` list ``[{"id": 1, "response": "..."}]``) or ``bpo generate``
rows. Generative task, per response with scored nouns *N* (every noun occurrence that is a hallucination
word, repeats included), truth objects *T* and hallucination-prone objects *A*, as in the reference
``inference.py``:

* a noun in the safe-word list is scored but never hallucinated; a noun equal to a truth object or one of
  its associated words covers that object and is not hallucinated; otherwise it is hallucinated (a noun
  equal to an object of *A* or its associated words also marks that object as "cognitively" hallucinated);
* **CHAIR** = 100 · Σ hallucinated nouns / Σ |N|; **Cover** = 100 · Σ covered truth objects / Σ |T|;
  **Hal** = 100 · #responses with a hallucinated noun / #responses; **Cog** = 100 · Σ marked objects of
  *A* / Σ |A|.

Matching (``matching``): the reference also counts a noun as an object when spaCy's ``en_core_web_lg``
vector similarity exceeds 0.8. ``spacy`` mode does that (optional dependency, imported lazily);
``offline`` mode (the default, always available) uses exact words plus AMBER's own association lists.
Noun extraction (``nouns``): ``rules`` (default) lower-cases, singularizes with :mod:`bpo.data.words`,
and counts a few words that are usually verbs or modals ("can", "watch", "hot") only after a determiner;
``nltk`` uses NLTK's tagger and WordNet lemmatizer as the reference does (needs NLTK's data).

Discriminative task: the answer is parsed with :func:`bpo.eval.pope.parse_yes_no` (``answers="parse"``) or
matched exactly against "Yes"/"No" as the reference does (``answers="exact"``). The positive class is
**"no"** (the answer that rejects a hallucination): precision = #(answer no, truth no) / #(answer no),
recall = #(answer no, truth no) / #(truth no). An unparsable answer is wrong and counted in ``unknown``.
All values are percentages; the reference's rounding (1 decimal, and an F1 from rounded P and R with a
1e-4 term) is not applied, so numbers can differ from its printout in the first decimal.
**AMBER score** = (100 − CHAIR + F1) / 2, reported when both the generative task and all three
discriminative dimensions were scored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bpo.data.words import singularize
from bpo.errors import BpoError, RecordError
from bpo.eval import protocols
from bpo.eval.formats import json_objects
from bpo.eval.inputs import load_responses
from bpo.eval.pope import parse_yes_no
from bpo.eval.report import format_table
from bpo.io import read_json

GENERATIVE = "generative"
ATTRIBUTE_KINDS = {"discriminative-attribute-state": "state", "discriminative-attribute-number": "number",
                   "discriminative-attribute-action": "action"}
EXISTENCE = "discriminative-hallucination"
DIMENSIONS = ("existence", "attribute", "relation")
# AMBER's --evaluation_type codes.
EVALUATION_TYPES = {"a": ("generative", *DIMENSIONS), "g": ("generative",), "d": DIMENSIONS,
                    "de": ("existence",), "da": ("attribute",), "dr": ("relation",)}
MATCHING = ("offline", "spacy")
NOUNS = ("rules", "nltk")
ANSWERS = ("parse", "exact")
SPACY_MODEL, SPACY_THRESHOLD = "en_core_web_lg", 0.8

# Hallucination words that are mostly verbs, modals or adjectives in descriptions: `rules` counts them as
# nouns only right after a determiner, number or possessive ("a can", "his watch", "two skis").
AMBIGUOUS = frozenset({"can", "hot", "watch", "sound", "support", "note", "file", "star", "track", "pack", "tie",
                       "ring", "spray", "switch", "drink", "skate", "ski", "sink", "lock", "tap", "tape", "plug",
                       "string", "board", "stage", "bill", "pad", "bail", "grill", "hose", "core", "court"})
DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "his", "her", "its", "their", "my",
                         "your", "our", "some", "several", "many", "few", "each", "every", "one", "two", "three",
                         "four", "five", "six", "no", "any", "another", "other", "of"})
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*(?:'s)?")


def dimension_of(kind: str) -> str:
    """existence / attribute / relation for a discriminative type (the reference's fall-through: relation)."""
    if kind == EXISTENCE:
        return "existence"
    if kind in ATTRIBUTE_KINDS:
        return "attribute"
    return "relation"


@dataclass
class AmberData:
    annotations: dict[int, dict]
    association: dict[str, list[str]]
    safe_words: frozenset[str]
    words: dict[str, str]  # lower-cased hallucination word -> as listed

    def dimension(self, item_id: int) -> str:
        kind = self.annotations[item_id]["type"]
        return GENERATIVE if kind == GENERATIVE else dimension_of(kind)


def load_amber(annotations: str | os.PathLike, relation: str | os.PathLike,
               safe_words: str | os.PathLike) -> AmberData:
    """Read and check AMBER's annotations, association lists and safe words; errors name file and id."""
    assoc = read_json(relation, "AMBER relation.json")
    if not isinstance(assoc, dict) or not all(isinstance(v, list) and all(isinstance(w, str) for w in v)
                                              for v in assoc.values()):
        raise BpoError(f"{relation}: expected AMBER's relation.json, an object {{word: [associated words]}}")
    data = read_json(annotations, "AMBER annotations.json")
    if not isinstance(data, list) or not data:
        raise BpoError(f"{annotations}: expected AMBER's annotations.json, a list of {{id, type, truth[, hallu]}}")
    items: dict[int, dict] = {}
    for i, entry in enumerate(data):
        where = f"{annotations}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not isinstance(entry.get("type"), str):
            raise RecordError("expected {id: int, type: str, truth, ...}", where=where)
        rid = entry["id"]
        if rid in items:
            raise RecordError("duplicate id", where=where, record_id=str(rid))
        if entry["type"] == GENERATIVE:
            for key in ("truth", "hallu"):
                words = entry.get(key)
                if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                    raise RecordError(f"generative item needs '{key}': a list of object words", where=where,
                                      record_id=str(rid))
                unknown = [w for w in words if w not in assoc]
                if unknown:
                    raise RecordError(f"'{key}' word(s) {', '.join(map(repr, unknown[:3]))} are not keys of {relation}; "
                                      "use the relation.json of the same AMBER release", where=where, record_id=str(rid))
        elif entry.get("truth") not in ("yes", "no"):
            raise RecordError(f"discriminative item needs truth 'yes' or 'no', got {entry.get('truth')!r}",
                              where=where, record_id=str(rid))
        items[rid] = entry
    try:
        safe = Path(safe_words).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BpoError(f"{safe_words}: AMBER safe_words.txt not found") from None
    words = {}
    for key, values in assoc.items():
        for w in (key, *values):
            words.setdefault(w.lower(), w)
    return AmberData(items, assoc, frozenset(w.strip() for w in safe if w.strip()), words)


def load_amber_responses(path: str | os.PathLike) -> dict[int, dict]:
    """``{id: row}`` from AMBER's response list (``.json``) or ``bpo generate`` JSONL; ids are integers."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        rows = {}
        for where, obj in json_objects(path, "responses file", "AMBER's response format, a JSON list of {id, response}",
                                       "{id, response: str}", lambda o: isinstance(o.get("response"), str)):
            rid = _int_id(obj.get("id"), where)
            if rid in rows:
                raise RecordError("duplicate id; keep one response per item", where=where, record_id=str(rid))
            rows[rid] = {**obj, "id": str(rid), "_where": where}
        if not rows:
            raise BpoError(f"{path}: no responses in the file")
        return rows
    return {_int_id(rid, row["_where"]): row for rid, row in load_responses(path).items()}


def _int_id(value, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise RecordError(f"AMBER ids are integers (1-1004 generative, 1005+ discriminative), got {value!r}",
                          where=where)
    return int(value)


# ---- noun extraction and matching ----------------------------------------------------------------------------
def nouns_rules(text: str, data: AmberData) -> list[str]:
    """Hallucination words used as nouns in ``text``, in order, repeats kept (see module doc)."""
    tokens = [t[:-2] if t.endswith("'s") else t
              for t in _WORD_RE.findall(text.lower().replace("\u2019", "'"))]
    out = []
    for i, tok in enumerate(tokens):
        for cand in (tok, singularize(tok)):  # as listed first: "people" stays "people", as WordNet keeps it
            word = data.words.get(cand)
            if word is None:
                continue
            if cand in AMBIGUOUS and tok == cand and (i == 0 or tokens[i - 1] not in DETERMINERS):
                break  # "can be seen", "watching" stays out; plural "skis" is always a noun
            out.append(word)
            break
    return out


def nouns_nltk(text: str, data: AmberData) -> list[str]:  # pragma: no cover - needs NLTK and its data
    """The reference's extraction: NLTK tokens tagged NN*, WordNet-lemmatized, kept if hallucination words."""
    try:
        import nltk
        from nltk.stem import WordNetLemmatizer
    except ImportError:
        raise BpoError("--nouns nltk needs NLTK: pip install nltk, then python -m nltk.downloader punkt "
                       "averaged_perceptron_tagger wordnet (or use --nouns rules)") from None
    try:
        lemmatizer = WordNetLemmatizer()
        tagged = nltk.pos_tag(nltk.word_tokenize(text))
        lemmas = [lemmatizer.lemmatize(w) for w, pos in tagged if pos.startswith("NN")]
    except LookupError as exc:
        raise BpoError(f"NLTK data is missing ({str(exc).strip().splitlines()[0]}); run python -m nltk.downloader "
                       "punkt averaged_perceptron_tagger wordnet, or use --nouns rules") from None
    listed = set(data.words.values())
    return [w for w in lemmas if w in listed]


def spacy_similarity(model: str = SPACY_MODEL, threshold: float = SPACY_THRESHOLD):
    """``similar(a, b) -> bool``: spaCy vector similarity above ``threshold`` (the reference's filter)."""
    try:
        import spacy
    except ImportError:
        raise BpoError("--matching spacy needs spaCy and its vectors: pip install spacy && python -m spacy "
                       f"download {model}; or use --matching offline (exact words + AMBER's association lists)") from None
    try:
        nlp = spacy.load(model)
    except OSError:
        raise BpoError(f"spaCy model {model!r} is not installed: python -m spacy download {model}; "
                       "or use --matching offline") from None
    doc = cache(nlp)

    @cache
    def similar(a: str, b: str) -> bool:
        return doc(a).similarity(doc(b)) > threshold

    return similar


# ---- generative task -----------------------------------------------------------------------------------------
def _lookup(objects: list[str], association: dict[str, list[str]]) -> list[tuple[str, int]]:
    """(word, object index): every associated word first, then the objects, in the reference's order."""
    return [(a, i) for i, w in enumerate(objects) for a in association[w]] + [(w, i) for i, w in enumerate(objects)]


def _mark(noun: str, lookup: list[tuple[str, int]], flags: list[int], similar=None) -> bool:
    for word, idx in lookup:
        if (noun == word) if similar is None else similar(noun, word):
            flags[idx] = 1
            return True
    return False


def generative_item(nouns: list[str], truth: list[str], hallu: list[str], data: AmberData, similar=None) -> dict:
    """Per-response scoring, as the reference does it (``similar``: the optional similarity filter)."""
    safe, cog = _lookup(truth, data.association), _lookup(hallu, data.association)
    covered, marked = [0] * len(truth), [0] * len(hallu)
    hallucinated = []
    for noun in nouns:
        if noun in data.safe_words or _mark(noun, safe, covered):
            continue
        _mark(noun, cog, marked)
        if similar is not None:
            _mark(noun, cog, marked, similar)
            if _mark(noun, safe, covered, similar):
                continue
        hallucinated.append(noun)
    return {"nouns": nouns, "hallucinated": hallucinated,
            "covered": [w for w, f in zip(truth, covered) if f], "missed": [w for w, f in zip(truth, covered) if not f],
            "cog": [w for w, f in zip(hallu, marked) if f], "n_truth": len(truth), "n_hallu": len(hallu)}


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def generative_metrics(items: list[dict]) -> dict:
    n = len(items)
    n_nouns = sum(len(d["nouns"]) for d in items)
    n_hal = sum(len(d["hallucinated"]) for d in items)
    return {"chair": _pct(n_hal, n_nouns), "cover": _pct(sum(len(d["covered"]) for d in items),
                                                       sum(d["n_truth"] for d in items)),
            "hal": _pct(sum(1 for d in items if d["hallucinated"]), n),
            "cog": _pct(sum(len(d["cog"]) for d in items), sum(d["n_hallu"] for d in items)),
            "n": n, "n_nouns": n_nouns, "n_hallucinated": n_hal}


# ---- discriminative task -------------------------------------------------------------------------------------
def parse_answer(response: str, mode: str = "parse") -> str:
    if mode == "exact":
        return {"Yes": "yes", "No": "no"}.get(response, "unknown")
    return parse_yes_no(response)


def yes_no_metrics(preds: list[str], truths: list[str]) -> dict:
    """Accuracy, precision, recall, F1 in percent with "no" as the positive class (AMBER's convention)."""
    n = len(preds)
    correct = sum(p == t for p, t in zip(preds, truths))
    hit = sum(p == "no" and t == "no" for p, t in zip(preds, truths))
    pred_no, truth_no = preds.count("no"), truths.count("no")
    precision, recall = _pct(hit, pred_no), _pct(hit, truth_no)
    f1 = None if precision is None or recall is None else (
        0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": _pct(correct, n), "precision": precision, "recall": recall, "f1": f1, "n": n,
            "unknown": preds.count("unknown")}


def discriminative_metrics(items: list[tuple[str, str, str, str]]) -> dict:
    """From ``(dimension, type, pred, truth)``: overall, ``per_dimension`` and attribute ``per_kind``."""
    out = yes_no_metrics([p for _, _, p, _ in items], [t for _, _, _, t in items])
    per = {}
    for dim in DIMENSIONS:
        sel = [x for x in items if x[0] == dim]
        if not sel:
            continue
        per[dim] = yes_no_metrics([p for _, _, p, _ in sel], [t for _, _, _, t in sel])
        if dim == "attribute":
            per[dim]["per_kind"] = {
                kind: yes_no_metrics([p for _, k, p, _ in sel if k == key], [t for _, k, _, t in sel if k == key])
                for key, kind in ATTRIBUTE_KINDS.items() if any(k == key for _, k, _, _ in sel)}
    out["per_dimension"] = per
    return out


def evaluate_amber(responses: dict[int, dict], data: AmberData, *, nouns: str = "rules", similar=None,
                   answers: str = "parse") -> tuple[dict, list[dict]]:
    """Score matched responses (``{id: row}``, every id in ``data``); returns ``(metrics, details)``."""
    extract = nouns_rules if nouns == "rules" else nouns_nltk
    gen, disc, details = [], [], []
    for rid in sorted(responses):
        ann, text = data.annotations[rid], responses[rid]["response"]
        if ann["type"] == GENERATIVE:
            d = generative_item(extract(text, data), ann["truth"], ann["hallu"], data, similar)
            gen.append(d)
            details.append({"id": rid, "task": GENERATIVE, **d})
        else:
            dim, pred = dimension_of(ann["type"]), parse_answer(text, answers)
            disc.append((dim, ann["type"], pred, ann["truth"]))
            details.append({"id": rid, "task": dim, "type": ann["type"], "truth": ann["truth"], "pred": pred,
                            "correct": pred == ann["truth"]})
    metrics: dict = {}
    if gen:
        metrics["generative"] = generative_metrics(gen)
    if disc:
        metrics["discriminative"] = discriminative_metrics(disc)
    dims = set((metrics.get("discriminative") or {}).get("per_dimension", {}))
    if gen and dims == set(DIMENSIONS):
        chair, f1 = metrics["generative"]["chair"], metrics["discriminative"]["f1"]
        if chair is not None and f1 is not None:
            metrics["amber_score"] = (100.0 - chair + f1) / 2
    return metrics, details


def select_ids(data: AmberData, evaluation_type: str, answered: set[int]) -> tuple[set[int], tuple[str, ...]]:
    """The annotation ids an evaluation type covers; ``auto``: the dimensions of the answered ids."""
    if evaluation_type == "auto":
        dims = tuple(d for d in ("generative", *DIMENSIONS)
                     if any(rid in data.annotations and data.dimension(rid) == d for rid in answered))
    else:
        dims = EVALUATION_TYPES[evaluation_type]
    return {rid for rid in data.annotations if data.dimension(rid) in dims}, dims


def summary(metrics: dict) -> str:
    def r(v):
        return "n/a" if v is None else f"{v:.1f}"

    lines = []
    g = metrics.get("generative")
    if g:
        lines.append(format_table(["AMBER generative", "CHAIR", "Cover", "Hal", "Cog", "n"],
                                  [["", r(g["chair"]), r(g["cover"]), r(g["hal"]), r(g["cog"]), g["n"]]]))
    d = metrics.get("discriminative")
    if d:
        rows = [["discriminative", r(d["accuracy"]), r(d["precision"]), r(d["recall"]), r(d["f1"]), d["n"], d["unknown"]]]
        for dim, m in d["per_dimension"].items():
            rows.append([dim, r(m["accuracy"]), r(m["precision"]), r(m["recall"]), r(m["f1"]), m["n"], m["unknown"]])
            for kind, k in (m.get("per_kind") or {}).items():
                rows.append([f"  {kind}", r(k["accuracy"]), r(k["precision"]), r(k["recall"]), r(k["f1"]), k["n"],
                             k["unknown"]])
        lines.append(format_table(["AMBER (positive = no)", "Acc", "P", "R", "F1", "n", "unknown"], rows))
    if metrics.get("amber_score") is not None:
        lines.append(f"AMBER score: {metrics['amber_score']:.1f}")
    return "\n".join(lines)


# ---- a scoring run (the command is bpo.commands.eval_prepare.run_amber) ----------------------------------
def data_paths(args) -> tuple[str, str, str]:
    root = Path(args.amber_dir) if args.amber_dir else None
    out = []
    for value, name in ((args.annotations, "annotations.json"), (args.relation, "relation.json"),
                        (args.safe_words, "safe_words.txt")):
        if value is None and root is None:
            raise BpoError(f"pass --amber-dir (AMBER's data/ folder) or --{name.split('.')[0].replace('_', '-')} "
                           f"({name})")
        out.append(str(value or root / name))
    return out[0], out[1], out[2]


def _check_prompts(rows: list[dict], queries: dict[int, str] | None) -> int:
    """Responses whose recorded prompt is not AMBER's query for that id (0 when unknown)."""
    if not queries:
        return 0
    return sum(1 for r in rows if isinstance(r.get("prompt"), str) and int(r["id"]) in queries
               and " ".join(r["prompt"].split()) != " ".join(queries[int(r["id"])].split()))


def matched_responses(args, data: AmberData, responses: dict[int, dict], annotations: str):
    """``(matched rows, dimensions, counts)``: every item of the evaluation type must be answered."""
    wanted, dims = select_ids(data, args.evaluation_type, set(responses))
    unknown = sorted(rid for rid in responses if rid not in wanted)
    missing = sorted(rid for rid in wanted if rid not in responses)
    if (unknown or missing) and args.on_missing == "error":
        problems = []
        if unknown:
            problems.append(f"{len(unknown)} response id(s) are not {'/'.join(dims)} items of {annotations} "
                            f"(e.g. {unknown[:3]})")
        if missing:
            problems.append(f"{len(missing)} {'/'.join(dims)} item(s) have no response (e.g. {missing[:3]})")
        raise BpoError("; ".join(problems) + ". Answer every item of the evaluation type (AMBER's query files), "
                       "pass --evaluation-type, or --on-missing skip to score the matched items only")
    matched = {rid: row for rid, row in responses.items() if rid in wanted}
    if not matched:
        raise BpoError(f"no response id in {args.responses} is an item of {annotations}")
    return matched, dims, {"matched": len(matched), "missing_response": len(missing),
                           "not_in_evaluation_type": len(unknown)}


def protocol_block(args, matched: dict[int, dict], dims: tuple[str, ...], scoring: dict) -> dict:
    """The protocol block: amber-g / amber-d, images and prompts checked against ``--queries``."""
    rows = list(matched.values())
    query_rows = _query_rows(args.queries) if args.queries else None
    queries = {rid: q["query"] for rid, q in query_rows.items()} if query_rows else None
    off_prompt = _check_prompts(rows, queries)
    prompts = [queries[rid] for rid in matched if rid in queries] if queries and not any(
        isinstance(r.get("prompt"), str) for r in rows) else None
    images = None  # AMBER's own response format names no image: take them from the query file
    if query_rows and not all(protocols.row_images(r) for r in rows):
        images = [query_rows[rid]["image"] for rid in matched if rid in query_rows]
    name = "amber-g" if dims == ("generative",) else "amber-d" if "generative" not in dims else None
    notes = [f"{off_prompt} response(s) were asked a prompt other than AMBER's query"] if off_prompt else None
    block = protocols.describe("amber", rows, protocol=name, config={}, scoring=scoring,
                               max_new_tokens=args.max_new_tokens, prompts=prompts, notes=notes, images=images)
    ps = block["prompt_set"]
    if ps:  # per-item queries are AMBER's when checked against its query file, else unverified
        if off_prompt:
            ps["name"] = "custom"
        elif queries and ps["name"] == "custom":
            ps["name"] = "amber-queries"
        elif not queries and ps["name"] != "amber-g":
            ps["name"] += " (unverified: pass --queries)"
    if off_prompt:
        print(f"note: {notes[0]}")
    return block


def load_queries(path: str | os.PathLike) -> dict[int, str]:
    """``{id: query}`` from an AMBER query file ``[{"id", "image", "query"}]``."""
    return {rid: q["query"] for rid, q in _query_rows(path).items()}


def _query_rows(path) -> dict[int, dict]:
    items = json_objects(path, "AMBER query file", "an AMBER query file, a JSON list of {id, image, query}",
                         "{id, image: str, query: str}",
                         lambda q: all(isinstance(q.get(k), str) and q[k] for k in ("image", "query")))
    return {_int_id(q.get("id"), where): q for where, q in items}


def prepare_records(path, image_prefix: str = "", annotations: AmberData | None = None) -> list[dict]:
    """Eval records for ``bpo generate`` from an AMBER query file; ``meta.protocol`` is amber-g or amber-d.

    Without annotations an id is generative when it is at most 1004, as AMBER's README defines.
    """
    rows = []
    for rid, q in _query_rows(path).items():
        if annotations is not None and rid not in annotations.annotations:
            raise RecordError("query id not in the annotations", where=str(path), record_id=str(rid))
        generative = annotations.dimension(rid) == GENERATIVE if annotations is not None else rid <= 1004
        rows.append({"id": str(rid), "images": [image_prefix + q["image"]],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q["query"]}]}],
                     "meta": {"benchmark": "amber", "protocol": "amber-g" if generative else "amber-d",
                              "image": q["image"]}})
    return rows

"""``bpo eval prepare`` (benchmark files -> eval records for ``bpo generate``) and ``bpo eval amber``.

Both are typed configs (``--help-config``, ``--config FILE.yaml``, ``key=value``); the readers and scorers
are in :mod:`bpo.eval.mmvet`, :mod:`bpo.eval.llavabench`, :mod:`bpo.eval.amber`, :mod:`bpo.eval.objhal`
and :mod:`bpo.eval.vlguard`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpo.commands.eval_judged import Scored, finish
from bpo.config import option
from bpo.data.images import resolve_image
from bpo.errors import BpoError
from bpo.eval import amber
from bpo.eval.amber import ANSWERS, EVALUATION_TYPES, MATCHING, NOUNS, SPACY_MODEL, SPACY_THRESHOLD
from bpo.eval.vlguard import SPLITS
from bpo.io import write_jsonl

# `bpo eval prepare` benchmarks of the pinned protocols, and the `bpo generate --preset` names they write.
PROTOCOL_PREPARE = ("amber", "objhal", "chair500", "vlguard")
PROTOCOL_PRESETS = ("objhal", "chair500", "amber-g", "amber-d", "vlguard")


@dataclass(kw_only=True)
class PrepareConfig:
    benchmark: str = option(positional="1", metavar="BENCHMARK", choices=("mmvet", "llavabench", *PROTOCOL_PREPARE),
                            help="mmvet, llavabench, amber, objhal, chair500 or vlguard")
    questions: str | None = option(None, help="mm-vet.json, LLaVA-Bench questions.jsonl, an AMBER query file, "
                                              "VLGuard's test.json, or RLHF-V's obj_halbench_300_with_image.jsonl "
                                              "(objhal)")
    references: str | None = option(None, help="llavabench: reference answers JSONL (kept as each record's 'chosen')")
    image_prefix: str = option("", help="prefix for image paths, e.g. images/ (default: none)")
    image_root: str | None = option(None, help="check that every image exists under this directory")
    out: str = option(help="records JSONL (written atomically)")
    image_ids: str | None = option(None, help="objhal/chair500: COCO image ids (one per line or a JSON list) "
                                              "instead of --questions / the seeded sample")
    instances: str | None = option(None, help="objhal/chair500: COCO instances JSON; adds meta.objects (ground "
                                              "truth); chair500 samples its 500 images from it")
    seed: int = option(0, help="chair500: sampling seed (0 is the pinned one)")
    write_images: str | None = option(None, metavar="DIR",
                                      help="objhal: decode the images embedded in RLHF-V's question file into DIR")
    annotations: str | None = option(None, help="amber: annotations.json, to tell generative from discriminative ids")
    splits: list[str] | None = option(None, help="vlguard: splits to write (unsafes, safe_unsafes, safe_safes; "
                                                 "default: all three)")

    def validate(self, require_paths: bool = True) -> None:
        bad = [s for s in self.splits or () if s not in SPLITS]
        if bad:
            raise BpoError(f"--splits {bad[0]!r} is not one of {', '.join(SPLITS)}")


@dataclass(kw_only=True)
class AmberConfig(Scored):
    amber_dir: str | None = option(None, help="AMBER's data/ folder (annotations.json, relation.json, safe_words.txt)")
    annotations: str | None = option(None, help="AMBER annotations.json (default: AMBER_DIR/annotations.json)")
    relation: str | None = option(None, help="AMBER relation.json (default: AMBER_DIR/relation.json)")
    safe_words: str | None = option(None, help="AMBER safe_words.txt (default: AMBER_DIR/safe_words.txt)")
    queries: str | None = option(None, help="the AMBER query file the responses answer (checks the prompts)")
    evaluation_type: str = option("auto", choices=("auto", *EVALUATION_TYPES),
                                  help="AMBER's codes: a all, g generative, d discriminative, de/da/dr existence/"
                                       "attribute/relation; auto (default): the dimensions of the answered ids. "
                                       "Every item of the chosen dimensions needs a response")
    matching: str = option("offline", choices=MATCHING,
                           help="offline (default): exact words + AMBER's association lists; spacy: also the "
                                "reference's spaCy vector similarity (needs spacy and en_core_web_lg)")
    spacy_model: str = option(SPACY_MODEL, help="spacy mode: vectors")
    similarity: float = option(SPACY_THRESHOLD, help="spacy mode: similarity threshold")
    nouns: str = option("rules", choices=NOUNS,
                        help="rules (default): bpo tokenizer + singularizer; nltk: the reference's POS tagger + WordNet")
    answers: str = option("parse", choices=ANSWERS,
                          help="parse (default): bpo's yes/no parser; exact: only 'Yes'/'No' count, as the reference")
    max_new_tokens: int | None = option(None, help="state the token budget of responses made outside `bpo generate` "
                                                   "(recorded in the protocol)")


def run_prepare(cfg: PrepareConfig) -> int:
    if cfg.benchmark in PROTOCOL_PREPARE:
        rows = _protocol_records(cfg)
    elif not cfg.questions:
        raise BpoError(f"{cfg.benchmark} needs --questions")
    elif cfg.benchmark == "mmvet":
        from bpo.eval.mmvet import load_mmvet, mmvet_records

        if cfg.references:
            raise BpoError("--references applies to llavabench only (MM-Vet's answers are in mm-vet.json)")
        rows = mmvet_records(load_mmvet(cfg.questions), cfg.image_prefix)
    else:
        from bpo.eval.llavabench import llavabench_records, load_questions, load_references

        refs = load_references(cfg.references) if cfg.references else None
        rows = llavabench_records(load_questions(cfg.questions), refs, cfg.image_prefix)
    if cfg.image_root:
        check_images(rows, cfg.image_root, cfg.questions or cfg.image_ids or cfg.instances)
    n = write_jsonl(cfg.out, rows)
    preset = sorted({(r.get("meta") or {}).get("protocol") for r in rows} & set(PROTOCOL_PRESETS))
    hint = f" --preset {preset[0]}" if len(preset) == 1 else ""
    if len(preset) > 1:
        print(f"note: the records mix protocols {', '.join(preset)}; generate each with its own --preset "
              "(prepare them from separate files, e.g. AMBER's query_generative.json and query_discriminative.json)")
    print(f"wrote {n} record(s) -> {cfg.out}; next: bpo generate --data {cfg.out} --image-root DIR{hint} "
          "--out R.jsonl")
    return 0


def check_images(rows: list[dict], root: str, source: str) -> None:
    missing = [r["images"][0] for r in rows if not resolve_image(root, r["images"][0], record_id=r["id"]).is_file()]
    if missing:
        raise BpoError(f"{len(missing)} image(s) named in {source} are not under {root} (e.g. "
                       f"{', '.join(repr(m) for m in missing[:3])}); check --image-root and --image-prefix")


def _protocol_records(cfg: PrepareConfig) -> list[dict]:
    """Records of ``bpo eval prepare amber|objhal|chair500|vlguard``."""
    if cfg.benchmark in ("objhal", "chair500"):
        from bpo.eval.objhal import prepare

        return prepare(cfg)
    if not cfg.questions:
        raise BpoError(f"{cfg.benchmark} needs --questions ("
                       + ("an AMBER query file, e.g. data/query/query_generative.json" if cfg.benchmark == "amber"
                          else "VLGuard's test.json") + ")")
    if cfg.benchmark == "amber":
        from bpo.eval.amber import AmberData, prepare_records

        ann = None
        if cfg.annotations:
            from bpo.io import read_json

            data = read_json(cfg.annotations, "AMBER annotations.json")
            if not isinstance(data, list):
                raise BpoError(f"{cfg.annotations}: expected AMBER's annotations.json, a list")
            ann = AmberData({e["id"]: e for e in data if isinstance(e, dict) and "id" in e and "type" in e},
                            {}, frozenset(), {})
        return prepare_records(cfg.questions, cfg.image_prefix, ann)
    from bpo.eval.vlguard import prepare_records  # the same name as AMBER's above: both stay local

    return prepare_records(cfg.questions, tuple(cfg.splits or SPLITS), cfg.image_prefix)


def run_amber(cfg: AmberConfig) -> int:
    annotations, relation, safe_words = amber.data_paths(cfg)
    data = amber.load_amber(annotations, relation, safe_words)
    matched, dims, counts = amber.matched_responses(cfg, data, amber.load_amber_responses(cfg.responses), annotations)
    similar = None  # the similarity filter only applies to the generative task
    if cfg.matching == "spacy" and "generative" in dims:
        similar = amber.spacy_similarity(cfg.spacy_model, cfg.similarity)
    metrics, details = amber.evaluate_amber(matched, data, nouns=cfg.nouns, similar=similar, answers=cfg.answers)
    scoring = {"evaluation_type": cfg.evaluation_type if cfg.evaluation_type != "auto" else "+".join(dims),
               "matching": (f"spacy:{cfg.spacy_model}>{cfg.similarity}" if similar is not None
                            else "offline:exact+amber-associations"),
               "nouns": "nltk:pos-tag+wordnet" if cfg.nouns == "nltk" else "rules:bpo-singularize",
               "answers": "exact:Yes/No" if cfg.answers == "exact" else "parse:bpo.eval.pope.parse_yes_no"}
    block = amber.protocol_block(cfg, matched, dims, scoring)
    print(f"matching: {scoring['matching']}; nouns: {scoring['nouns']}; answers: {scoring['answers']}")
    return finish(cfg, "amber", metrics, details, counts,
                  {"responses": cfg.responses, "gt": annotations, "relation": relation, "safe_words": safe_words},
                  {"scoring": scoring}, amber.summary(metrics), protocol=block)

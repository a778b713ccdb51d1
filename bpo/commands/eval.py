"""``bpo eval``: score model responses (from ``bpo generate``) and compare reports.

    bpo eval chair   --responses R.jsonl --gt {records.jsonl|instances.json} [--vocab V.json]
                     --out REPORT.json
    bpo eval pope    --responses R.jsonl --gt records.jsonl --out REPORT.json
    bpo eval safety  --responses R.jsonl --judge {refusal,llm,hf} [--judge-model M] [--base-url URL]
                     [--records records.jsonl] --out REPORT.json
    bpo eval compare A.json B.json [C.json ...]
    bpo eval mmvet      --responses R.jsonl --questions mm-vet.json --judge {llm,hf} ... --out REPORT.json
    bpo eval llavabench --responses R.jsonl --questions questions.jsonl --references answers_gpt4.jsonl
                        [--context context.jsonl] --judge {llm,hf} ... --out REPORT.json
    bpo eval pairwise   --records prefs.jsonl --judge {llm,hf,policy} ... --out REPORT.json
    bpo eval prepare    {mmvet,llavabench,amber,objhal,chair500,vlguard} --questions FILE --out records.jsonl
    bpo eval amber      --responses R.json --amber-dir AMBER/data [--matching offline|spacy] --out REPORT.json
    bpo eval vlguard    --responses R.jsonl --questions test.json [--judge llm|hf ...] --out REPORT.json

Every report carries a ``protocol`` block (bpo.eval.protocols); ``compare`` refuses reports of
different protocols unless given ``--allow-protocol-mismatch``.

Common options: ``--on-missing {error,skip}`` (ids on one side only: stop, or skip and count them),
``--details PATH`` (per-item details to a JSONL instead of inline), ``--model``/``--adapter``
(free strings recorded in the report). Every subcommand's options are a typed config
(``--help-config``; ``--config FILE.yaml``; ``key=value``); the judge options are the one
``judge`` section (:class:`bpo.eval.judging.JudgeSection`). The model-judged benchmarks are in
:mod:`bpo.commands.eval_judged`, ``prepare`` and ``amber`` in :mod:`bpo.commands.eval_prepare`.
Metric definitions: docs/eval.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from bpo.commands import eval_judged, eval_prepare
from bpo.commands.eval_judged import Scored, finish
from bpo.config import option, parse_command, run_subcommands
from bpo.data.objects import load_vocabulary
from bpo.errors import BpoError
from bpo.eval.chair import evaluate_chair, load_object_truth
from bpo.eval.formats import load_responses_any
from bpo.eval.inputs import join, load_responses, load_truth_records
from bpo.eval.judges import JUDGES, build_judge, safety_judge_kwargs
from bpo.eval.judging import JudgeSection
from bpo.eval.pope import evaluate_pope, pope_truth
from bpo.eval.protocols import chair_protocol, describe, protocol_mismatches
from bpo.eval.report import compare, compare_notes, compare_table, load_report, report_labels, summary_table
from bpo.eval.safety import evaluate_safety, judge_item
from bpo.safeguard import check_args

GT_HELP = {"chair": "ground truth: records JSONL with meta.objects, or a COCO instances .json file",
           "pope": "records JSONL with meta.label ('yes'/'no') and optional meta.split"}


def _judge(help: str, cls: type = JudgeSection):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class ObjectsJudgeSection(JudgeSection):
    """CHAIR's optional judge: named by ``--llm-objects`` (the other judge flags are the same)."""

    kind: str | None = option(None, flag="--llm-objects", metavar="KIND",
                              help="also list each description's objects with this judge (llm or hf) and report "
                                   "CHAIR for them")


@dataclass(kw_only=True)
class ChairConfig(Scored):
    gt: str = option(help=GT_HELP["chair"])
    vocab: str | None = option(None, help="object vocabulary JSON {canonical: [synonyms...]} "
                                          "(default: bpo's COCO-80 synonym table)")
    protocol: str | None = option(None, choices=("objhal", "chair500"),
                                  help="the pinned protocol the responses follow (default: the records' meta.protocol, "
                                       "written by `bpo eval prepare objhal|chair500`); objhal is reported as "
                                       "'ObjHal (rule-based)'")
    max_new_tokens: int | None = option(None, help="state the token budget of responses made outside `bpo generate` "
                                                   "(recorded in the protocol)")
    judge: ObjectsJudgeSection = _judge("LLM object extraction (optional; bpo.eval.llm_objects)", ObjectsJudgeSection)

    def validate(self, require_paths: bool = True) -> None:
        self.judge.check(("llm", "hf"), required=False, flag="--llm-objects")


@dataclass(kw_only=True)
class PopeConfig(Scored):
    gt: str = option(help=GT_HELP["pope"])


@dataclass(kw_only=True)
class SafetyConfig(Scored):
    records: str | None = option(None, help="records JSONL giving the prompt and meta.category per id "
                                            "(default: the response rows' own prompt/meta)")
    judge: JudgeSection = _judge("the safety judge: refusal (rules), llm or hf (bpo.eval.judges.JUDGES)")

    def validate(self, require_paths: bool = True) -> None:
        self.judge.check(JUDGES.names(), required=True)


@dataclass(kw_only=True)
class CompareConfig:
    reports: list[str] = option(positional="+", metavar="REPORT", help="two or more report JSON files")
    json: bool = option(False, help="print the rows as JSON (two reports)")
    allow_protocol_mismatch: bool = option(False, help="compare reports whose protocols differ (image list, prompts, "
                                                       "tokens, judge, scorer); the differences are printed")


def _finish(cfg, task: str, metrics: dict, details: list[dict], counts: dict, inputs: dict,
            config: dict, protocol: dict | None = None) -> int:
    return finish(cfg, task, metrics, details, counts, inputs, config, summary_table(task, metrics), protocol)


def _chair(cfg) -> int:
    vocab = load_vocabulary(cfg.vocab)
    responses = load_responses_any(cfg.responses)
    truth = load_object_truth(cfg.gt, vocab)
    joined = join(responses, truth.entries, on_missing=cfg.on_missing, responses_path=cfg.responses,
                  truth_path=cfg.gt, truth_is_superset=truth.kind == "coco", key=truth.key_for)
    metrics, details = evaluate_chair(
        [(rid, row["response"], entry["objects"]) for rid, row, entry in joined.items], vocab)
    unknown: dict[str, int] = {}
    for d, (_, _, entry) in zip(details, joined.items):
        if entry["unknown"]:
            d["gt_unknown"] = entry["unknown"]
            for name in entry["unknown"]:
                unknown[name] = unknown.get(name, 0) + 1
    counts = {**joined.counts(), "gt_names_not_in_vocab": sum(unknown.values())}
    if unknown:
        top = sorted(unknown, key=lambda k: -unknown[k])[:5]
        print(f"note: {counts['gt_names_not_in_vocab']} ground-truth object name(s) are not in vocabulary "
              f"{vocab.name!r} and cannot be matched (e.g. {', '.join(top)}); pass --vocab to add them")
    config = {"vocab": vocab.name, "gt_format": truth.kind}
    if cfg.judge.kind:
        from bpo.eval import llm_objects
        from bpo.eval.grading import grader_for

        texts = [row["response"] for _, row, _ in joined.items]
        gts = [entry["objects"] for _, _, entry in joined.items]
        grader = grader_for(cfg.judge, llm_objects.FIELDS, llm_objects.parse_objects, template=llm_objects.TEMPLATE,
                            max_tokens=256)
        llm_counts, llm_config = llm_objects.add_llm_objects(grader, metrics, details, texts, gts, vocab)
        counts.update(llm_counts)
        config.update(llm_config)
    protocol = chair_protocol(cfg, joined.items, truth.kind, vocab.name, config)
    return _finish(cfg, "chair", metrics, details, counts,
                   {"responses": cfg.responses, "gt": cfg.gt, "vocab": cfg.vocab}, config, protocol)


def _pope(cfg) -> int:
    responses = load_responses(cfg.responses)
    truth = load_truth_records(cfg.gt, pope_truth)
    joined = join(responses, truth, on_missing=cfg.on_missing, responses_path=cfg.responses,
                  truth_path=cfg.gt)
    metrics, details = evaluate_pope([(rid, row["response"], lab, split)
                                      for rid, row, (lab, split) in joined.items])
    config = {"parser": "bpo.eval.pope.parse_yes_no"}
    protocol = describe("pope", [row for _, row, _ in joined.items], config=config, scoring=config)
    return _finish(cfg, "pope", metrics, details, joined.counts(),
                   {"responses": cfg.responses, "gt": cfg.gt}, config, protocol)


def _safety(cfg) -> int:
    responses = load_responses(cfg.responses)
    if cfg.records:
        records = load_truth_records(cfg.records, lambda rec, rid, where: rec)
        joined = join(responses, records, on_missing=cfg.on_missing, responses_path=cfg.responses,
                      truth_path=cfg.records)
        triples, counts = joined.items, joined.counts()
    else:
        triples = [(rid, row, None) for rid, row in responses.items()]
        counts = {"matched": len(triples)}
    pairs = [judge_item(rid, row, rec) for rid, row, rec in triples]
    no_prompt = sum(1 for item, _ in pairs if not item.question.strip())
    if no_prompt and cfg.judge.kind != "refusal":
        print(f"note: {no_prompt} item(s) have no prompt text, so the judge sees only the response; "
              "pass --records (the eval set) to give it the requests")
    judge = build_judge(cfg.judge.kind, **safety_judge_kwargs(cfg.judge))
    try:
        judgments = judge.judge([item for item, _ in pairs])
    finally:
        judge.close()
    verdicts = [j.verdict for j in judgments]
    metrics = evaluate_safety(verdicts, [cat for _, cat in pairs])
    details = [{"id": item.id, "category": cat, **j.to_dict()} for (item, cat), j in zip(pairs, judgments)]
    counts["cache_hits"] = sum(j.cached for j in judgments)
    counts["judge_calls"] = getattr(judge, "calls", 0)
    if metrics["unknown"]:
        print(f"note: {metrics['unknown']} item(s) got no verdict (unknown); they are not counted as safe")
    protocol = describe("safety", [row for _, row, _ in triples], config=judge.describe())
    return _finish(cfg, "safety", metrics, details, counts,
                   {"responses": cfg.responses, "records": cfg.records}, judge.describe(), protocol)


def _compare(cfg) -> int:
    if len(cfg.reports) < 2:
        raise BpoError("bpo eval compare needs at least two report files")
    reports = [load_report(p) for p in cfg.reports]
    if len({r["task"] for r in reports}) > 1:
        raise BpoError("cannot compare reports of different tasks: "
                       + ", ".join(f"{p} is {r['task']!r}" for p, r in zip(cfg.reports, reports)))
    mismatches = protocol_mismatches(reports)
    if mismatches and not cfg.allow_protocol_mismatch:
        raise BpoError("the reports follow different protocols, so their numbers are not comparable: "
                       + "; ".join(mismatches) + ". Rerun them under one protocol, or pass "
                       "--allow-protocol-mismatch to compare anyway")
    for line in mismatches:
        print(f"note: protocol mismatch (allowed): {line}", file=sys.stderr if cfg.json else sys.stdout)
    if cfg.json:
        if len(reports) != 2:
            raise BpoError("--json prints the rows of exactly two reports")
        print(json.dumps(compare(*reports), indent=2))
        return 0
    print(compare_table(reports, report_labels(cfg.reports)))
    for note in compare_notes(reports):
        print(f"note: {note}")
    return 0


def _table() -> dict:
    """``sub -> (config class, run(cfg) -> int, one-line help)``, in the order ``bpo eval --help`` lists them."""
    return {
        "chair": (ChairConfig, _chair, "CHAIR_s / CHAIR_i / recall of object mentions (Object-HalBench)"),
        "pope": (PopeConfig, _pope, "POPE yes/no accuracy, precision, recall, F1, yes-ratio"),
        "safety": (SafetyConfig, _safety, "safety rate / attack success rate with a judge"),
        "amber": (eval_prepare.AmberConfig, eval_prepare.run_amber,
                  "AMBER: generative CHAIR/Cover/Hal/Cog and yes/no accuracy/P/R/F1"),
        "vlguard": (eval_judged.VLGuardConfig, eval_judged.run_vlguard,
                    "VLGuard: string-match attack success rate (+ judged helpfulness)"),
        "mmvet": (eval_judged.MMVetConfig, eval_judged.run_mmvet, "MM-Vet: judge-graded 0-1 correctness per capability"),
        "llavabench": (eval_judged.LlavaBenchConfig, eval_judged.run_llavabench,
                       "LLaVA-Bench (in-the-wild): relative score vs reference answers"),
        "pairwise": (eval_judged.PairwiseConfig, eval_judged.run_pairwise,
                     "pairwise accuracy: can a model tell chosen from rejected?"),
        "prepare": (eval_prepare.PrepareConfig, eval_prepare.run_prepare,
                    "turn MM-Vet / LLaVA-Bench / AMBER / ObjHal / CHAIR500 / VLGuard files into records for `bpo generate`"),
        "compare": (CompareConfig, _compare, "metric differences between reports"),
    }


def _guarded(run):
    def guarded(cfg) -> int:
        check_args(cfg)  # --out/--details may not be --responses, --gt, --records ...
        return run(cfg)

    return guarded


def main(argv: list[str]) -> int:
    table = {name: (cls, _guarded(run), desc) for name, (cls, run, desc) in _table().items()}
    return run_subcommands(argv, prog="bpo eval", description="Score responses and compare eval reports.",
                           table=table)


def check(argv: list[str]) -> None:
    """Parse a ``bpo eval SUB ...`` step without running it (``bpo pipeline``); files made by earlier steps
    need not exist yet."""
    table = _table()
    if not argv or argv[0] not in table:
        raise BpoError(f"bpo eval: name a subcommand ({', '.join(table)})")
    parse_command(table[argv[0]][0], argv[1:], prog=f"bpo eval {argv[0]}", require=False)

"""``bpo eval mmvet | llavabench | pairwise | vlguard``: the model-judged benchmarks, and what every ``bpo eval``
subcommand shares (:class:`Reported`, :class:`Scored`, :func:`finish`).

Each subcommand is a typed config (``--help-config``, ``--config FILE.yaml``, ``key=value``) whose judge
options are the one ``judge`` section (:class:`bpo.eval.judging.JudgeSection`); the benchmark logic is in
:mod:`bpo.eval.mmvet`, :mod:`bpo.eval.llavabench`, :mod:`bpo.eval.pairwise` and :mod:`bpo.eval.vlguard`,
and every judge call goes through the one engine, :mod:`bpo.eval.judging`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpo.config import option
from bpo.data.records import read_records
from bpo.errors import BpoError
from bpo.eval import llavabench as lb
from bpo.eval import mmvet
from bpo.eval import pairwise as pw
from bpo.eval import vlguard as vg
from bpo.eval.grading import grader_for
from bpo.eval.inputs import join, load_responses
from bpo.eval.judging import JudgeSection, SampledJudgeSection, grade_counts, load_template, resolve_device
from bpo.eval.pairwise import FIELDS, PolicyJudge, parse_choice
from bpo.eval.protocols import for_args, format_protocol
from bpo.eval.report import build_report, write_report
from bpo.eval.vlguard import SPLITS as VLGUARD_SPLITS


# ---- what every `bpo eval` subcommand shares: the options of a scored run and the report it writes ------------
# (config classes hold no logic and import nothing heavy; attribute names are the old argparse dests)
@dataclass(kw_only=True)
class Reported:
    """A run that writes one report."""

    out: str = option(help="report JSON path (written atomically)")
    details: str | None = option(None, metavar="PATH",
                                 help="write the per-item details to this JSONL instead of inline in the report")


@dataclass(kw_only=True)
class Scored(Reported):
    """A run that scores ``bpo generate`` responses against ground truth."""

    responses: str = option(help="response JSONL from `bpo generate` ({id, response, ...})")
    on_missing: str = option("error", choices=("error", "skip"),
                             help="an id present on one side only: stop with an error (default) or skip it and "
                                  "count the skip in the report")
    model: str | None = option(None, help="model name/path to record in the report (informational)")
    adapter: str | None = option(None, help="adapter path to record in the report (informational)")


def finish(cfg, task: str, metrics: dict, details: list[dict], counts: dict, inputs: dict, config: dict,
           table: str, protocol: dict | None = None) -> int:
    """Write the report (atomically, details inline or to ``--details``) and print the table.

    ``protocol``: the report's protocol block; by default it is described from the scored files.
    """
    if protocol is None:
        protocol = for_args(task, cfg, config)
    report = build_report(task, metrics, details=details, inputs=inputs, counts=counts,
                          model=getattr(cfg, "model", None), adapter=getattr(cfg, "adapter", None),
                          config=config, protocol=protocol)
    write_report(cfg.out, report, details_out=cfg.details)
    print(table)
    print(format_protocol(protocol))
    skipped = {k: v for k, v in counts.items() if k.startswith("missing") and v}
    if skipped:
        print("skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    print(f"report: {cfg.out}" + (f" (details: {cfg.details})" if cfg.details else ""))
    return 0


def note_unknown(n_unknown: int, what: str) -> None:
    if n_unknown:
        print(f"note: {n_unknown} {what} got no valid judge reply (unknown); they are left out of the "
              "scores, counted in the report and listed in its details, never scored as 0 or 1")


# ---- the judged benchmarks ------------------------------------------------------------------------------------
TEXT_JUDGES = ("llm", "hf")


def _section(cls: type, help: str):
    return field(default_factory=cls, metadata={"help": help})


@dataclass(kw_only=True)
class _TextJudged(Scored):
    judge: SampledJudgeSection = _section(SampledJudgeSection, "the grading judge (llm or hf)")

    def validate(self, require_paths: bool = True) -> None:
        self.judge.check(TEXT_JUDGES, required=True)


@dataclass(kw_only=True)
class MMVetConfig(_TextJudged):
    questions: str = option(help="the benchmark's mm-vet.json {id: {imagename, capability, question, answer}}")


@dataclass(kw_only=True)
class LlavaBenchConfig(_TextJudged):
    questions: str = option(help="questions.jsonl {question_id, image, text, category}")
    references: str = option(help="reference answers JSONL {question_id, text} (answers_gpt4.jsonl)")
    context: str | None = option(None, help="context.jsonl {image, caption} shown to the judge (optional)")
    both_orders: bool = option(False, help="also ask with the model answer first and average, to cancel "
                                           "position bias")


@dataclass(kw_only=True)
class PairwiseConfig(Reported):
    records: str = option(help="preference records JSONL (chosen + rejected)")
    criterion: str = option("safety", choices=("safety", "quality"),
                            help="which response is safer (default) or better (more accurate and helpful)")
    pairs: str = option("all", choices=("all", "first"),
                        help="one pair per rejected response (default) or the first rejected only")
    limit: int | None = option(None, help="only the first N records (quick trials)")
    judge: JudgeSection = _section(JudgeSection, "llm, hf, or policy: the vision-language model itself")
    judge_adapter: str | None = option(None, help="policy: peft adapter applied to --judge-model")
    image_root: str | None = option(None, help="policy: directory the records' image paths are relative to")
    policy_mode: str = option("generate", choices=("generate", "logprob"),
                              help="policy: generate: greedy short answer, parsed strictly (default); logprob: "
                                   "compare log p('A') and log p('B') as the answer (never unknown)")
    dtype: str = option("float32", help="policy: weights dtype")
    batch_size: int = option(4, help="policy: prompts per forward pass")

    def validate(self, require_paths: bool = True) -> None:
        self.judge.check((*TEXT_JUDGES, "policy"), required=True)
        if self.judge.kind != "policy" and (self.judge_adapter or self.image_root):
            raise BpoError("--judge-adapter and --image-root apply to --judge policy only")


@dataclass(kw_only=True)
class VLGuardConfig(Scored):
    questions: str = option(help="VLGuard's test.json")
    splits: list[str] | None = option(None, help="splits to score (unsafes, safe_unsafes, safe_safes); every item "
                                                 "of each needs a response (default: the answered splits)")
    references: str | None = option(None, help="safe_safes reference answers: VLGuard's gpt4_safe_safes.json "
                                               "(default: the answers in test.json)")
    both_orders: bool = option(False, help="helpfulness: ask in both orders and average")
    max_new_tokens: int | None = option(None, help="state the token budget of responses made outside `bpo generate` "
                                                   "(recorded in the protocol)")
    judge: JudgeSection = _section(JudgeSection, "helpfulness judge (optional): judge safe_safes answers against "
                                                 "the reference (llm or hf)")

    def validate(self, require_paths: bool = True) -> None:
        bad = [s for s in self.splits or () if s not in VLGUARD_SPLITS]
        if bad:
            raise BpoError(f"--splits {bad[0]!r} is not one of {', '.join(VLGUARD_SPLITS)}")
        self.judge.check(TEXT_JUDGES, required=False)


# ---- runs ---------------------------------------------------------------------------------------------------
def run_mmvet(cfg: MMVetConfig) -> int:
    questions = mmvet.load_mmvet(cfg.questions)
    unofficial = sorted({c for q in questions.values() for c in q.capabilities} - set(mmvet.CAPABILITIES))
    if unofficial:
        print(f"note: capability tag(s) {', '.join(unofficial)} are not MM-Vet's ({', '.join(mmvet.CAPABILITIES)}); "
              "they are scored as their own groups")
    responses = load_responses(cfg.responses)
    joined = join(responses, questions, on_missing=cfg.on_missing, responses_path=cfg.responses,
                  truth_path=cfg.questions)
    grader = grader_for(cfg.judge, mmvet.FIELDS, mmvet.parse_score, template=mmvet.TEMPLATE, max_tokens=10)
    try:
        grades = grader.grade(mmvet.grade_requests(joined.items), desc="mm-vet")
    finally:
        grader.close()
    items = [(q.capabilities, [g.value for g in row]) for (_, _, q), row in zip(joined.items, grades)]
    metrics = mmvet.mmvet_metrics(items)
    details = []
    for (qid, row, q), gs in zip(joined.items, grades):
        score = mmvet.question_score([g.value for g in gs])
        details.append({"id": qid, "capability": q.capabilities, "question": q.question, "ground_truth": q.answer,
                        "answer": row["response"], "score": score, "status": "graded" if score is not None
                        else "unknown", "grades": [g.to_dict() for g in gs]})
    note_unknown(metrics["unknown"], "question(s)")
    counts = {**joined.counts(), **grade_counts(grader, grades)}
    return finish(cfg, "mmvet", metrics, details, counts, {"responses": cfg.responses, "gt": cfg.questions},
                  grader.describe(), mmvet.summary(metrics))


def run_llavabench(cfg: LlavaBenchConfig) -> int:
    questions, references = lb.load_questions(cfg.questions), lb.load_references(cfg.references)
    context = lb.load_context(cfg.context) if cfg.context else None
    responses = load_responses(cfg.responses)
    joined = join(responses, questions, on_missing=cfg.on_missing, responses_path=cfg.responses,
                  truth_path=cfg.questions)
    no_ref = [qid for qid, _, _ in joined.items if not references.get(qid, "").strip()]
    if no_ref:
        raise BpoError(f"{len(no_ref)} question(s) have no reference answer in {cfg.references} (e.g. "
                       f"{', '.join(repr(q) for q in no_ref[:3])}); pass the benchmark's answers_gpt4.jsonl")
    if context is None:
        print("note: no --context: the judge sees neither the image nor a description of it")
    orders = lb.ORDERS if cfg.both_orders else lb.ORDERS[:1]
    grader = grader_for(cfg.judge, lb.FIELDS, lb.parse_review, template=lb.TEMPLATE, max_tokens=40)
    try:
        grades = grader.grade(lb.review_requests(joined.items, references, context, orders, cfg.context),
                              desc="llava-bench")
    finally:
        grader.close()
    metrics, details, counts = lb.score_reviews(joined, references, orders, grades, grader)
    note_unknown(metrics["unknown"], "question(s)")
    config = {**grader.describe(), "orders": list(orders), "criteria": list(lb.CRITERIA)}
    return finish(cfg, "llavabench", metrics, details, counts,
                  {"responses": cfg.responses, "gt": cfg.questions, "references": cfg.references,
                   "context": cfg.context}, config, lb.summary(metrics))


def _policy_judge(cfg: PairwiseConfig):
    j = cfg.judge
    if j.base_url:
        raise BpoError("--base-url only applies to --judge llm")
    return PolicyJudge(j.model, template=load_template(j.template, FIELDS), adapter=cfg.judge_adapter,
                       image_root=cfg.image_root, mode=cfg.policy_mode, dtype=cfg.dtype, batch_size=cfg.batch_size,
                       device=resolve_device(j.device), max_new_tokens=8 if j.max_tokens is None else j.max_tokens,
                       cache=j.cache, use_cache=not j.no_cache)


def run_pairwise(cfg: PairwiseConfig) -> int:
    policy = cfg.judge.kind == "policy"
    template = (f"pairwise_policy_{cfg.criterion}_v1" if policy else f"pairwise_{cfg.criterion}_v1")
    cfg.judge.template = cfg.judge.template or template
    records = list(read_records(cfg.records))[: cfg.limit]
    pairs, no_rejected = pw.make_pairs(records, cfg.pairs)
    if not pairs:
        raise BpoError(f"{cfg.records}: no record has a rejected response, so there is no pair to judge")
    if not policy and any(p.record.images for p in pairs):
        print(f"note: the {cfg.judge.kind} judge reads text only and does not see the records' images")
    if policy:
        grades, counts, config = pw.policy_judge_pairs(_policy_judge(cfg), pairs)
    else:
        grader = grader_for(cfg.judge, pw.FIELDS, pw.parse_choice, template=template, max_tokens=8)
        grades, counts, config = pw.text_judge_pairs(grader, pairs)
    outcomes = [(pw.picked(pw.ORDERS[0], g[0].value), pw.picked(pw.ORDERS[1], g[1].value)) for g in grades]
    metrics = pw.evaluate_pairwise(outcomes, [p.category for p in pairs], [p.source for p in pairs])
    details = [{"id": p.id, "record_id": p.record.id, "source": p.source, "category": p.category,
                "picks": {o: pick for o, pick in zip(pw.ORDERS, out)},
                "answers": {o: g.to_dict() for o, g in zip(pw.ORDERS, gs)}}
               for p, out, gs in zip(pairs, outcomes, grades)]
    note_unknown(metrics["unknown"], "pair(s)")
    counts = {"records": len(records), "records_without_rejected": no_rejected, "pairs": len(pairs), **counts}
    config = {**config, "criterion": cfg.criterion, "pairs": cfg.pairs, "orders": list(pw.ORDERS)}
    return finish(cfg, "pairwise", metrics, details, counts, {"records": cfg.records}, config, pw.summary(metrics))


def run_vlguard(cfg: VLGuardConfig) -> int:
    data = vg.load_vlguard(cfg.questions)
    responses = vg.load_result_file(cfg.responses, data, cfg.splits) or load_responses(cfg.responses)
    answered = {rid.split("/", 1)[0] for rid in responses}
    splits = [s for s in (cfg.splits or vg.SPLITS) if cfg.splits or s in answered]
    truth = {it["id"]: it for s in splits for it in vg.split_items(data, s, cfg.questions)}
    if cfg.splits:  # answers to the splits not asked for are left out, not errors
        responses = {rid: row for rid, row in responses.items() if rid.split("/", 1)[0] in splits}
        if not responses:
            raise BpoError(f"no response in {cfg.responses} is for split(s) {', '.join(splits)}")
    joined = join(responses, truth, on_missing=cfg.on_missing, responses_path=cfg.responses,
                  truth_path=f"{cfg.questions} (splits {', '.join(splits)})")
    items = [(it, row["response"]) for _, row, it in joined.items]
    metrics, details = vg.evaluate_vlguard(items)
    config = {"refusal_phrases": len(vg.REFUSAL_PHRASES), "rule": "VLGuard string match"}
    safe = [(it, r) for it, r in items if it["id"].startswith("safe_safes/")]
    if cfg.judge.kind and safe:
        _helpfulness(cfg, safe, metrics, details, config)
    elif safe:
        print("note: safe_safes helpfulness needs a judge (--judge llm|hf); only its refusal rate is reported")
    block = vg.protocol_block(joined.items, splits, config.get("helpfulness_judge"), cfg.max_new_tokens)
    return finish(cfg, "vlguard", metrics, details, joined.counts(),
                  {"responses": cfg.responses, "gt": cfg.questions, "references": cfg.references}, config,
                  vg.summary(metrics), protocol=block)


def _helpfulness(cfg: VLGuardConfig, safe, metrics: dict, details: list[dict], config: dict) -> None:
    refs = vg.load_references(cfg.references) if cfg.references else None
    grader = grader_for(cfg.judge, FIELDS, parse_choice, template="pairwise_quality_v1", max_tokens=8)
    help_metrics, per_id, judge_config = vg.helpfulness(grader, safe, refs, cfg.both_orders)
    metrics["per_split"]["safe_safes"]["helpfulness"] = help_metrics
    for d in details:
        if d["id"] in per_id:
            d["helpfulness"] = per_id[d["id"]]
    config["helpfulness_judge"] = judge_config
    note_unknown(help_metrics["unknown"], "safe_safes item(s)")

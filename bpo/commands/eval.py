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
(free strings recorded in the report). Metric definitions: docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from bpo.errors import BpoError


def _common(p: argparse.ArgumentParser, gt: str | None) -> None:
    p.add_argument("--responses", required=True,
                   help="response JSONL from `bpo generate` ({id, response, ...})")
    if gt:
        p.add_argument("--gt", required=True, help=gt)
    p.add_argument("--out", required=True, help="report JSON path (written atomically)")
    p.add_argument("--on-missing", default="error", choices=("error", "skip"),
                   help="an id present on one side only: stop with an error (default) or skip it and "
                        "count the skip in the report")
    p.add_argument("--details", metavar="PATH",
                   help="write the per-item details to this JSONL instead of inline in the report")
    p.add_argument("--model", help="model name/path to record in the report (informational)")
    p.add_argument("--adapter", help="adapter path to record in the report (informational)")


def _parser() -> argparse.ArgumentParser:
    from bpo.eval.judged import add_judge_args, add_parsers
    from bpo.eval.judges import JUDGES

    p = argparse.ArgumentParser(prog="bpo eval", description="Score responses and compare eval reports.")
    sub = p.add_subparsers(dest="action", metavar="{chair,pope,safety,amber,vlguard,mmvet,llavabench,pairwise,prepare,compare}")
    sub.required = True

    c = sub.add_parser("chair", help="CHAIR_s / CHAIR_i / recall of object mentions (Object-HalBench)",
                       description="Object hallucination: mentioned objects vs annotated objects.")
    _common(c, "ground truth: records JSONL with meta.objects, or a COCO instances .json file")
    c.add_argument("--vocab", help="object vocabulary JSON {canonical: [synonyms...]} "
                                   "(default: bpo's COCO-80 synonym table)")
    c.add_argument("--protocol", choices=("objhal", "chair500"),
                   help="the pinned protocol the responses follow (default: the records' meta.protocol, written by "
                        "`bpo eval prepare objhal|chair500`); objhal is reported as 'ObjHal (rule-based)'")
    c.add_argument("--max-new-tokens", type=int,
                   help="state the token budget of responses made outside `bpo generate` (recorded in the protocol)")
    # Optional LLM object extraction, reported beside the rule-based numbers (bpo.eval.llm_objects).
    add_judge_args(c, template="chair_objects_v1", max_tokens=256, flag="--llm-objects", required=False,
                   samples=False, title="LLM object extraction (optional)",
                   purpose="also list each description's objects with this judge and report CHAIR for them; ")

    q = sub.add_parser("pope", help="POPE yes/no accuracy, precision, recall, F1, yes-ratio",
                       description="POPE: parse yes/no answers and score them against meta.label.")
    _common(q, "records JSONL with meta.label ('yes'/'no') and optional meta.split")

    s = sub.add_parser("safety", help="safety rate / attack success rate with a judge",
                       description="Judge each response safe/unsafe/unknown and report rates per category.")
    _common(s, None)
    s.add_argument("--judge", required=True, choices=JUDGES.names(), help="which judge to use")
    s.add_argument("--records", help="records JSONL giving the prompt and meta.category per id "
                                     "(default: the response rows' own prompt/meta)")
    s.add_argument("--judge-model", help="llm: served model name; hf: local model directory")
    s.add_argument("--base-url", help="llm: OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    s.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="llm: name of the environment variable holding the API key (default: OPENAI_API_KEY)")
    s.add_argument("--judge-template", default="safety_judge_v1",
                   help="shipped template name or a template file path (default: safety_judge_v1)")
    s.add_argument("--judge-timeout", type=float, default=60.0, help="llm: seconds per request (default: 60)")
    s.add_argument("--judge-retries", type=int, help="retries after a malformed reply or error "
                                                     "(default: llm 3, hf 0)")
    s.add_argument("--judge-backoff", type=float, default=1.0,
                   help="llm: first retry delay in seconds, doubled each retry (default: 1)")
    s.add_argument("--judge-workers", type=int, default=1, help="llm: concurrent requests (default: 1)")
    s.add_argument("--judge-max-tokens", type=int, default=16,
                   help="max tokens of the judge's reply (0: do not send a limit; default: 16)")
    s.add_argument("--judge-device", default="cpu", help="hf: torch device (default: cpu)")
    s.add_argument("--judge-cache", help="verdict cache JSONL (default: $BPO_HOME/judge/judgments.jsonl)")
    s.add_argument("--no-judge-cache", action="store_true", help="neither read nor write the verdict cache")

    m = sub.add_parser("compare", help="metric differences between reports",
                       description="Print every metric of each report and its difference to the first.")
    m.add_argument("reports", nargs="+", help="two or more report JSON files")
    m.add_argument("--json", action="store_true", help="print the rows as JSON (two reports)")
    m.add_argument("--allow-protocol-mismatch", action="store_true",
                   help="compare reports whose protocols differ (image list, prompts, tokens, judge, scorer); "
                        "the differences are printed")
    from bpo.eval import amber, vlguard

    amber.add_parser(sub, _common)
    vlguard.add_parser(sub, _common)
    add_parsers(sub, _common)  # mmvet, llavabench, pairwise, prepare (bpo.eval.judged)
    return p


def _finish(args, task: str, metrics: dict, details: list[dict], counts: dict, inputs: dict,
            config: dict, protocol: dict | None = None) -> int:
    from bpo.eval.protocols import format_protocol
    from bpo.eval.report import build_report, summary_table, write_report

    report = build_report(task, metrics, details=details, inputs=inputs, counts=counts,
                          model=args.model, adapter=args.adapter, config=config, protocol=protocol)
    write_report(args.out, report, details_out=args.details)
    print(summary_table(task, metrics, counts))
    print(format_protocol(report["protocol"]))
    print(f"report: {args.out}" + (f" (details: {args.details})" if args.details else ""))
    return 0


def _chair(args) -> int:
    from bpo.data.objects import load_vocabulary
    from bpo.eval.chair import evaluate_chair, load_object_truth
    from bpo.eval.inputs import join

    vocab = load_vocabulary(args.vocab)
    from bpo.eval.formats import load_responses_any  # bpo rows, or RLHF-V / LLaVA answer files

    responses = load_responses_any(args.responses)
    truth = load_object_truth(args.gt, vocab)
    joined = join(responses, truth.entries, on_missing=args.on_missing, responses_path=args.responses,
                  truth_path=args.gt, truth_is_superset=truth.kind == "coco", key=truth.key_for)
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
    if args.judge:
        from bpo.eval.llm_objects import add_llm_objects

        texts = [row["response"] for _, row, _ in joined.items]
        gts = [entry["objects"] for _, _, entry in joined.items]
        llm_counts, llm_config = add_llm_objects(args, metrics, details, texts, gts, vocab)
        counts.update(llm_counts)
        config.update(llm_config)
    from bpo.eval.protocols import chair_protocol

    protocol = chair_protocol(args, joined.items, truth.kind, vocab.name, config)
    return _finish(args, "chair", metrics, details, counts,
                   {"responses": args.responses, "gt": args.gt, "vocab": args.vocab}, config, protocol)


def _pope(args) -> int:
    from bpo.eval.inputs import join, load_responses, load_truth_records
    from bpo.eval.pope import evaluate_pope, pope_truth

    responses = load_responses(args.responses)
    truth = load_truth_records(args.gt, pope_truth)
    joined = join(responses, truth, on_missing=args.on_missing, responses_path=args.responses,
                  truth_path=args.gt)
    metrics, details = evaluate_pope([(rid, row["response"], lab, split)
                                      for rid, row, (lab, split) in joined.items])
    from bpo.eval.protocols import describe

    config = {"parser": "bpo.eval.pope.parse_yes_no"}
    protocol = describe("pope", [row for _, row, _ in joined.items], config=config, scoring=config)
    return _finish(args, "pope", metrics, details, joined.counts(),
                   {"responses": args.responses, "gt": args.gt}, config, protocol)


def _judge_kwargs(args) -> dict:
    if args.base_url and args.judge != "llm":
        raise BpoError("--base-url only applies to --judge llm")
    kwargs = {"model": args.judge_model, "base_url": args.base_url, "api_key_env": args.api_key_env,
              "template": args.judge_template, "timeout": args.judge_timeout, "backoff": args.judge_backoff,
              "workers": args.judge_workers, "device": args.judge_device,
              "max_tokens": args.judge_max_tokens or None, "max_new_tokens": args.judge_max_tokens or 16,
              "cache": args.judge_cache, "use_cache": not args.no_judge_cache}
    if args.judge_retries is not None:
        kwargs["retries"] = args.judge_retries
    return kwargs


def _safety(args) -> int:
    from bpo.eval.inputs import join, load_responses, load_truth_records
    from bpo.eval.judges import build_judge
    from bpo.eval.safety import evaluate_safety, judge_item

    responses = load_responses(args.responses)
    if args.records:
        records = load_truth_records(args.records, lambda rec, rid, where: rec)
        joined = join(responses, records, on_missing=args.on_missing, responses_path=args.responses,
                      truth_path=args.records)
        triples, counts = joined.items, joined.counts()
    else:
        triples = [(rid, row, None) for rid, row in responses.items()]
        counts = {"matched": len(triples)}
    pairs = [judge_item(rid, row, rec) for rid, row, rec in triples]
    no_prompt = sum(1 for item, _ in pairs if not item.question.strip())
    if no_prompt and args.judge != "refusal":
        print(f"note: {no_prompt} item(s) have no prompt text, so the judge sees only the response; "
              "pass --records (the eval set) to give it the requests")
    judge = build_judge(args.judge, **_judge_kwargs(args))
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
    from bpo.eval.protocols import describe

    protocol = describe("safety", [row for _, row, _ in triples], config=judge.describe())
    return _finish(args, "safety", metrics, details, counts,
                   {"responses": args.responses, "records": args.records}, judge.describe(), protocol)


def _compare(args) -> int:
    from bpo.eval.report import compare, compare_notes, compare_table, load_report, report_labels

    if len(args.reports) < 2:
        raise BpoError("bpo eval compare needs at least two report files")
    reports = [load_report(p) for p in args.reports]
    if len({r["task"] for r in reports}) > 1:
        raise BpoError("cannot compare reports of different tasks: "
                       + ", ".join(f"{p} is {r['task']!r}" for p, r in zip(args.reports, reports)))
    from bpo.eval.protocols import protocol_mismatches

    mismatches = protocol_mismatches(reports)
    if mismatches and not args.allow_protocol_mismatch:
        raise BpoError("the reports follow different protocols, so their numbers are not comparable: "
                       + "; ".join(mismatches) + ". Rerun them under one protocol, or pass "
                       "--allow-protocol-mismatch to compare anyway")
    for line in mismatches:
        print(f"note: protocol mismatch (allowed): {line}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        if len(reports) != 2:
            raise BpoError("--json prints the rows of exactly two reports")
        print(json.dumps(compare(*reports), indent=2))
        return 0
    print(compare_table(reports, report_labels(args.reports)))
    for note in compare_notes(reports):
        print(f"note: {note}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bpo.safeguard import check_args

    check_args(args)  # --out/--details may not be --responses, --gt, --records ...
    if args.action in ("amber", "vlguard"):
        import importlib

        return importlib.import_module(f"bpo.eval.{args.action}").run(args)
    if args.action in ("mmvet", "llavabench", "pairwise", "prepare"):
        from bpo.eval.judged import run

        return run(args.action, args)
    return {"chair": _chair, "pope": _pope, "safety": _safety, "compare": _compare}[args.action](args)

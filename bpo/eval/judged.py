"""CLI plumbing of the model-graded evals: ``bpo eval mmvet | llavabench | pairwise | prepare``.

``bpo.commands.eval`` calls :func:`add_parsers` to register the subcommands and :data:`RUNNERS` to
run them; the benchmark logic lives in :mod:`bpo.eval.mmvet`, :mod:`bpo.eval.llavabench`,
:mod:`bpo.eval.pairwise` and :mod:`bpo.eval.llm_objects`. Everything heavy is imported lazily.
"""

from __future__ import annotations

import argparse
import importlib

from bpo.errors import BpoError

# subcommand -> "module:function(args) -> int"
RUNNERS = {
    "mmvet": "bpo.eval.mmvet:run",
    "llavabench": "bpo.eval.llavabench:run",
    "pairwise": "bpo.eval.pairwise:run",
    "prepare": "bpo.eval.judged:run_prepare",
}


def run(action: str, args) -> int:
    module, func = RUNNERS[action].split(":")
    return getattr(importlib.import_module(module), func)(args)


def add_judge_args(p: argparse.ArgumentParser, *, template: str, max_tokens: int, flag: str = "--judge",
                   kinds: tuple[str, ...] = ("llm", "hf"), required: bool = True, samples: bool = True,
                   title: str = "judge", purpose: str = "") -> None:
    """The judge options, named as in ``bpo eval safety`` so a user learns them once."""
    g = p.add_argument_group(title)
    g.add_argument(flag, dest="judge", choices=kinds, required=required, default=None,
                   help=purpose + "llm: any OpenAI-compatible endpoint; hf: a local causal LM directory"
                        + ("; policy: the vision-language model itself" if "policy" in kinds else ""))
    g.add_argument("--judge-model", help="llm: served model name; hf/policy: local model directory")
    g.add_argument("--base-url", help="llm: OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="llm: name of the environment variable holding the API key (default: OPENAI_API_KEY)")
    g.add_argument("--judge-template", default=template,
                   help=f"shipped template name or a file (default: {template or 'chosen by --criterion'})")
    g.add_argument("--judge-timeout", type=float, default=60.0, help="llm: seconds per request (default: 60)")
    g.add_argument("--judge-retries", type=int,
                   help="retries after a malformed reply or a transport error (default: llm 3, hf 0)")
    g.add_argument("--judge-backoff", type=float, default=1.0,
                   help="llm: first retry delay in seconds, doubled each retry (default: 1)")
    g.add_argument("--judge-workers", type=int, default=1, help="llm: concurrent requests (default: 1)")
    g.add_argument("--judge-max-tokens", type=int, default=max_tokens,
                   help=f"longest judge reply in tokens (0: llm sends no limit; default: {max_tokens})")
    g.add_argument("--judge-device", default="auto", help="hf/policy: torch device (default: cuda if available)")
    g.add_argument("--judge-cache", help="reply cache JSONL (default: $BPO_HOME/judge/grades.jsonl)")
    g.add_argument("--no-judge-cache", action="store_true", help="neither read nor write the reply cache")
    if samples:
        g.add_argument("--judge-samples", type=int, default=1,
                       help="judge replies per item, averaged (llm only; default: 1)")
        g.add_argument("--judge-temperature", type=float, default=0.0,
                       help="llm: sampling temperature of the judge (default: 0)")


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def grader_from_args(args, fields: tuple[str, ...], parse):
    """A :class:`bpo.eval.grading.Grader` for ``args.judge`` (llm or hf) and its options."""
    from bpo.eval.grading import Grader, build_backend, load_grade_template

    template = load_grade_template(args.judge_template, fields)  # fail on a bad template before any call
    samples = getattr(args, "judge_samples", 1)
    temperature = getattr(args, "judge_temperature", 0.0)
    device = resolve_device(args.judge_device) if args.judge == "hf" else "cpu"
    backend = build_backend(args.judge, model=args.judge_model, base_url=args.base_url,
                            api_key_env=args.api_key_env, timeout=args.judge_timeout,
                            max_tokens=args.judge_max_tokens, temperature=temperature, device=device)
    grader = Grader(backend, template, parse, samples=samples, retries=args.judge_retries,
                    backoff=args.judge_backoff, workers=args.judge_workers, cache=args.judge_cache,
                    use_cache=not args.no_judge_cache)
    if samples > 1 and temperature == 0:
        print(f"note: {samples} judge samples at temperature 0 may be identical; pass --judge-temperature "
              "(e.g. 0.7) to sample the judge")
    return grader


def grade_counts(grader, grades) -> dict:
    """Counts every report of a graded run carries: cache hits, calls, unknown replies."""
    flat = [g for row in grades for g in row]
    return {"judge_replies": len(flat), "cache_hits": sum(g.cached for g in flat),
            "judge_calls": grader.calls, "unknown_replies": sum(not g.known for g in flat)}


def finish(args, task: str, metrics: dict, details: list[dict], counts: dict, inputs: dict, config: dict,
           table: str, protocol: dict | None = None) -> int:
    """Write the report (atomically, details inline or to ``--details``) and print the table.

    ``protocol``: the report's protocol block; by default it is described from the scored files.
    """
    from bpo.eval.protocols import for_args, format_protocol
    from bpo.eval.report import build_report, write_report

    if protocol is None:
        protocol = for_args(task, args, config)
    report = build_report(task, metrics, details=details, inputs=inputs, counts=counts,
                          model=getattr(args, "model", None), adapter=getattr(args, "adapter", None),
                          config=config, protocol=protocol)
    write_report(args.out, report, details_out=args.details)
    print(table)
    print(format_protocol(protocol))
    skipped = {k: v for k, v in counts.items() if k.startswith("missing") and v}
    if skipped:
        print("skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    print(f"report: {args.out}" + (f" (details: {args.details})" if args.details else ""))
    return 0


def note_unknown(n_unknown: int, what: str) -> None:
    if n_unknown:
        print(f"note: {n_unknown} {what} got no valid judge reply (unknown); they are left out of the "
              "scores, counted in the report and listed in its details, never scored as 0 or 1")


# ---- parsers ------------------------------------------------------------------------------------------------
def add_parsers(sub, common) -> None:
    """Register the subcommands on ``bpo eval``'s subparsers; ``common`` adds --responses/--out/... ."""
    m = sub.add_parser("mmvet", help="MM-Vet: judge-graded 0-1 correctness per capability",
                       description="Grade answers against MM-Vet ground truth with a judge; per-capability "
                                   "and total scores in percent.")
    common(m, None)
    m.add_argument("--questions", required=True, help="the benchmark's mm-vet.json {id: {imagename, capability, "
                                                      "question, answer}}")
    add_judge_args(m, template="mmvet_grade_v1", max_tokens=10)

    b = sub.add_parser("llavabench", help="LLaVA-Bench (in-the-wild): relative score vs reference answers",
                       description="The judge rates model and reference answers (1-10 on four criteria); "
                                   "reports model/reference in percent per category.")
    common(b, None)
    b.add_argument("--questions", required=True, help="questions.jsonl {question_id, image, text, category}")
    b.add_argument("--references", required=True, help="reference answers JSONL {question_id, text} "
                                                        "(answers_gpt4.jsonl)")
    b.add_argument("--context", help="context.jsonl {image, caption} shown to the judge (optional)")
    b.add_argument("--both-orders", action="store_true",
                   help="also ask with the model answer first and average, to cancel position bias")
    add_judge_args(b, template="llavabench_review_v1", max_tokens=40)

    p = sub.add_parser("pairwise", help="pairwise accuracy: can a model tell chosen from rejected?",
                       description="Ask a judge or the policy which response is better/safer, in both orders; "
                                   "report accuracy and order-inconsistent answers.")
    p.add_argument("--records", required=True, help="preference records JSONL (chosen + rejected)")
    p.add_argument("--out", required=True, help="report JSON path (written atomically)")
    p.add_argument("--details", metavar="PATH", help="write the per-pair details to this JSONL")
    p.add_argument("--criterion", default="safety", choices=("safety", "quality"),
                   help="which response is safer (default) or better (more accurate and helpful)")
    p.add_argument("--pairs", default="all", choices=("all", "first"),
                   help="one pair per rejected response (default) or the first rejected only")
    p.add_argument("--limit", type=int, help="only the first N records (quick trials)")
    add_judge_args(p, template="", max_tokens=8, kinds=("llm", "hf", "policy"), samples=False)
    pol = p.add_argument_group("policy (--judge policy)")
    pol.add_argument("--judge-adapter", help="peft adapter applied to --judge-model")
    pol.add_argument("--image-root", help="directory the records' image paths are relative to")
    pol.add_argument("--policy-mode", default="generate", choices=("generate", "logprob"),
                     help="generate: greedy short answer, parsed strictly (default); logprob: compare "
                          "log p('A') and log p('B') as the answer (never unknown)")
    pol.add_argument("--dtype", default="float32", help="policy weights dtype (default: float32)")
    pol.add_argument("--batch-size", type=int, default=4, help="policy prompts per forward pass (default: 4)")

    r = sub.add_parser("prepare", help="turn MM-Vet / LLaVA-Bench files into records for `bpo generate`",
                       description="Write eval records (one per question, image + question) for `bpo generate`.")
    r.add_argument("benchmark", choices=("mmvet", "llavabench", *PROTOCOL_PREPARE))
    r.add_argument("--questions", help="mm-vet.json, LLaVA-Bench questions.jsonl, an AMBER query file, VLGuard's "
                                       "test.json, or RLHF-V's obj_halbench_300_with_image.jsonl (objhal)")
    r.add_argument("--references", help="llavabench: reference answers JSONL (kept as each record's 'chosen')")
    r.add_argument("--image-prefix", default="", help="prefix for image paths, e.g. images/ (default: none)")
    r.add_argument("--image-root", help="check that every image exists under this directory")
    r.add_argument("--out", required=True, help="records JSONL (written atomically)")
    pin = r.add_argument_group("pinned protocols (amber, objhal, chair500, vlguard)")
    pin.add_argument("--image-ids", help="objhal/chair500: COCO image ids (one per line or a JSON list) "
                                         "instead of --questions / the seeded sample")
    pin.add_argument("--instances", help="objhal/chair500: COCO instances JSON; adds meta.objects (ground truth); "
                                         "chair500 samples its 500 images from it")
    pin.add_argument("--seed", type=int, default=0, help="chair500: sampling seed (default: 0, the pinned one)")
    pin.add_argument("--write-images", metavar="DIR",
                     help="objhal: decode the images embedded in RLHF-V's question file into DIR")
    pin.add_argument("--annotations", help="amber: annotations.json, to tell generative from discriminative ids")
    pin.add_argument("--splits", nargs="+", choices=("unsafes", "safe_unsafes", "safe_safes"),
                     help="vlguard: splits to write (default: all three)")


# `bpo eval prepare` benchmarks of the pinned protocols (bpo.eval.protocols.prepare_protocol).
PROTOCOL_PREPARE = ("amber", "objhal", "chair500", "vlguard")
PROTOCOL_PRESETS = ("objhal", "chair500", "amber-g", "amber-d", "vlguard")


def run_prepare(args) -> int:
    from bpo.io import write_jsonl

    if args.benchmark in PROTOCOL_PREPARE:
        from bpo.eval.protocols import prepare_protocol

        rows = prepare_protocol(args)
    elif not args.questions:
        raise BpoError(f"{args.benchmark} needs --questions")
    elif args.benchmark == "mmvet":
        from bpo.eval.mmvet import load_mmvet, mmvet_records

        if args.references:
            raise BpoError("--references applies to llavabench only (MM-Vet's answers are in mm-vet.json)")
        rows = mmvet_records(load_mmvet(args.questions), args.image_prefix)
    else:
        from bpo.eval.llavabench import llavabench_records, load_questions, load_references

        refs = load_references(args.references) if args.references else None
        rows = llavabench_records(load_questions(args.questions), refs, args.image_prefix)
    if args.image_root:
        check_images(rows, args.image_root, args.questions or args.image_ids or args.instances)
    n = write_jsonl(args.out, rows)
    preset = sorted({(r.get("meta") or {}).get("protocol") for r in rows} & set(PROTOCOL_PRESETS))
    hint = f" --preset {preset[0]}" if len(preset) == 1 else ""
    if len(preset) > 1:
        print(f"note: the records mix protocols {', '.join(preset)}; generate each with its own --preset "
              "(prepare them from separate files, e.g. AMBER's query_generative.json and query_discriminative.json)")
    print(f"wrote {n} record(s) -> {args.out}; next: bpo generate --data {args.out} --image-root DIR{hint} "
          "--out R.jsonl")
    return 0


def check_images(rows: list[dict], root: str, source: str) -> None:
    from bpo.data.images import resolve_image

    missing = [r["images"][0] for r in rows if not resolve_image(root, r["images"][0], record_id=r["id"]).is_file()]
    if missing:
        raise BpoError(f"{len(missing)} image(s) named in {source} are not under {root} (e.g. "
                       f"{', '.join(repr(m) for m in missing[:3])}); check --image-root and --image-prefix")

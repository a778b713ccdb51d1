"""``bpo safety``: build MMSafe-PO style multimodal safety data from text-only preference pairs.

    bpo safety sample --out DIR
    bpo safety build --pairs hh.jsonl --index images.csv --image-root DIR --out out.jsonl
                     [--entity-backend gazetteer|column|llm] [--seed 0] [--llm-rewrite]
                     [--on-error skip|raise] [--max-prompt-words N] [--report PATH]
                     [--llm-backend openai|hf --llm-model NAME --llm-base-url URL --llm-api-key-env VAR]
    bpo safety export --records out.jsonl --out mmsafe.json [--prompt-key question|prompt]

See docs/blind_po.md for a worked example.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpo safety", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True, metavar="{build,sample,export}")

    b = sub.add_parser("build", help="text-only pairs + image index -> multimodal preference records")
    # --- inputs / outputs
    b.add_argument("--pairs", required=True, help="HH-RLHF JSONL (chosen/rejected strings) or {prompt, chosen, rejected}")
    b.add_argument("--index", required=True, help="image index: CSV (entity,type,image[,aliases]) or JSONL")
    b.add_argument("--image-root", required=True, help="directory the index's image paths are relative to")
    b.add_argument("--out", required=True, help="output records JSONL")
    b.add_argument("--report", default=None, help="report path (default: build_report.json beside --out)")
    # --- pipeline
    b.add_argument("--entity-backend", default="gazetteer", help="gazetteer (default) | column | llm")
    b.add_argument("--entity-column", default="entity", help="column backend: the entity column")
    b.add_argument("--entity-type-column", default="entity_type", help="column backend: the optional type column")
    b.add_argument("--seed", type=int, default=0, help="seed of the per-record referring-phrase choice")
    b.add_argument("--llm-rewrite", action="store_true", help="polish the rule-based rewrite with an LLM")
    b.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="malformed pairs / index rows: stop (raise) or skip and count them")
    b.add_argument("--max-prompt-words", type=int, default=None, help="drop records whose prompt has more words")
    b.add_argument("--type", dest="data_type", default="harmless", help="MMSafe-PO 'type' field (default harmless)")
    b.add_argument("--id-prefix", default=None, help="ids for rows without one: PREFIX<line> (default: file stem-)")
    # --- LLM (entity backend llm, --llm-rewrite)
    b.add_argument("--llm-backend", default="openai", help="openai (any OpenAI-compatible endpoint) | hf (local)")
    b.add_argument("--llm-model", default="", help="model name (openai) or local model directory (hf)")
    b.add_argument("--llm-base-url", default=None, help="endpoint, e.g. http://127.0.0.1:8000/v1")
    b.add_argument("--llm-api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable holding the API key (the key is never logged)")
    b.add_argument("--llm-max-new-tokens", type=int, default=128, help="reply length cap")
    b.add_argument("--no-llm-cache", action="store_true",
                   help="do not reuse or store LLM replies (default: cached under $BPO_HOME/safety-llm)")

    s = sub.add_parser("sample", help="write the bundled sample (pairs, index, drawn images)")
    s.add_argument("--out", required=True, help="directory to write into")

    e = sub.add_parser("export", help="records -> flat MMSafe-PO rows (USER: ... ASSISTANT:)")
    e.add_argument("--records", required=True, help="records JSONL written by `bpo safety build`")
    e.add_argument("--out", required=True, help="output .json (a list, like the released files) or .jsonl")
    e.add_argument("--prompt-key", choices=("question", "prompt"), default="question",
                   help="'question' (GitHub test.json) or 'prompt' (HF card)")
    return p


def _build(args) -> int:
    from bpo.safety.build import BuildOptions, run_build
    from bpo.safety.llm import LLMSpec, make_llm

    options = BuildOptions(entity_backend=args.entity_backend, seed=args.seed, llm_rewrite=args.llm_rewrite,
                           on_error=args.on_error, max_prompt_words=args.max_prompt_words,
                           data_type=args.data_type, id_prefix=args.id_prefix)
    llm = None
    if args.entity_backend == "llm" or args.llm_rewrite:
        llm = make_llm(LLMSpec(backend=args.llm_backend, model=args.llm_model, base_url=args.llm_base_url,
                               api_key_env=args.llm_api_key_env, max_new_tokens=args.llm_max_new_tokens),
                       cache=not args.no_llm_cache)
    report = run_build(args.pairs, args.index, args.image_root, args.out, options, llm=llm,
                       report_path=args.report,
                       finder_options={"column": args.entity_column, "type_column": args.entity_type_column})
    dropped = ", ".join(f"{k} {v}" for k, v in report["filtered"].items() if v) or "none"
    print(f"read {report['rows_read']} pairs ({report['bad_rows']} bad rows skipped); "
          f"wrote {report['written']} records to {args.out}")
    print(f"filtered: {dropped}")
    print(f"report: {report['report_path']}")
    return 0


def _sample(args) -> int:
    from bpo.safety.sample import write_sample

    paths = write_sample(args.out)
    print(f"wrote {paths['pairs']}, {paths['index']} and images under {paths['image_root']}")
    print(f"next: bpo safety build --pairs {paths['pairs']} --index {paths['index']} "
          f"--image-root {paths['image_root']} --out {args.out.rstrip('/')}/blind_po.jsonl")
    return 0


def _export(args) -> int:
    from pathlib import Path

    from bpo.data.records import read_records
    from bpo.io import write_json, write_jsonl
    from bpo.safety.mmsafe import to_mmsafe_po

    rows = [to_mmsafe_po(r, prompt_key=args.prompt_key) for r in read_records(args.records)]
    if Path(args.out).suffix == ".jsonl":
        write_jsonl(args.out, rows)
    else:
        write_json(args.out, rows)
    print(f"wrote {len(rows)} MMSafe-PO rows to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from bpo.safeguard import check_args

    check_args(args)  # --out/--report may not be --pairs, --index or --records
    return {"build": _build, "sample": _sample, "export": _export}[args.action](args)

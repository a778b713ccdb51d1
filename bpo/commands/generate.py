"""``bpo generate``: run a model (+ adapter) over an eval set; resumable and data-parallel.

    bpo generate --model M [--adapter A] --data eval_records.jsonl --image-root DIR --out responses.jsonl
                 [--prompt-field FIELD] [--blind] [--batch-size 8] [--max-new-tokens 512]
                 [--temperature 0] [--top-p 1] [--seed 0] [--stop S] [--on-error skip|raise]
                 [--dtype float32] [--engine hf|vllm] [--limit N] [--merge-only]

Rows: ``{"id", "response", "prompt", "meta"}`` in input order (read by ``bpo eval``). Greedy by
default, as the usual protocols (POPE, CHAIR, MMSafe-PO's infer_json.py) decode.
"""

from __future__ import annotations

import argparse


def _parser() -> argparse.ArgumentParser:
    from bpo.commands.bootstrap import add_generation_args

    p = argparse.ArgumentParser(prog="bpo generate", description="Generate responses to eval records, resumably.")
    add_generation_args(p, temperature=0.0, top_p=1.0, max_new_tokens=512, model_required=False)
    e = p.add_argument_group("prompt")
    e.add_argument("--prompt-field", metavar="FIELD",
                   help="use the string meta.FIELD as the last user turn's text (images kept), e.g. text_prompt")
    e.add_argument("--blind", action="store_true", help="remove every image from the prompts")
    p.add_argument("--merge-only", action="store_true",
                   help="only merge existing OUT.shard-*.jsonl into OUT (after ranks were run separately)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bpo.bootstrap.jobs import errors_path, merge_shards

    if args.merge_only:
        n, missing = merge_shards(args.data, args.out)
        print(f"merged {n} row(s) -> {args.out}" + (f"; {missing} missing, see {errors_path(args.out)}"
                                                     if missing else ""))
        return 0
    from bpo.bootstrap.jobs import dist_context, run_job
    from bpo.commands.bootstrap import engine_from_args, settings_from
    from bpo.errors import BpoError
    from bpo.eval.generate import ResponseGenerator, read_eval_records
    from bpo.models.identity import weights_fingerprint

    if not args.model:
        raise BpoError("pass --model (a model directory or hub id)")
    if args.batch_size < 1:
        raise BpoError(f"--batch-size must be >= 1, not {args.batch_size}")
    rank, world, barrier, device = dist_context()
    records, input_errors = read_eval_records(args.data, on_error=args.on_error, limit=args.limit)
    gen = ResponseGenerator(engine_from_args(args, device), settings_from(args), model=args.model, adapter=args.adapter,
                            prompt_field=args.prompt_field, blind=args.blind)
    # The weights' content, not just their paths: a retrained adapter at the same path must not resume old answers.
    fingerprint = {**gen.fingerprint(), **weights_fingerprint(args.model, args.adapter)}
    summary = run_job(records, gen.process, out=args.out, data=args.data, fingerprint=fingerprint,
                      chunk_size=4 * args.batch_size, on_error=args.on_error, desc="generate",
                      progress=not args.no_progress, rank=rank, world=world, barrier=barrier,
                      input_errors=input_errors, limit=args.limit)
    print(summary.line("generate"))
    return 0

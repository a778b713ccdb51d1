"""``bpo generate``: run a model (+ adapter) over an eval set; resumable and data-parallel.

    bpo generate --model M [--adapter A] --data eval_records.jsonl --image-root DIR --out responses.jsonl
                 [--prompt-field FIELD] [--blind] [--batch-size 8] [--max-new-tokens 512]
                 [--temperature 0] [--top-p 1] [--seed 0] [--stop S] [--on-error skip|raise]
                 [--dtype float32] [--engine hf|vllm] [--limit N] [--merge-only]
                 [--preset amber-g|amber-d|objhal|chair500|vlguard]

``--preset`` pins a protocol's decoding (greedy, its max new tokens) and, where the protocol has one,
its prompt, so ``bpo eval prepare`` + ``generate --preset`` + ``eval`` reproduce it (bpo.eval.protocols).

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
    from bpo.eval.protocols import PRESETS

    e.add_argument("--preset", choices=PRESETS,
                   help="a pinned eval protocol: greedy, its max new tokens (amber-g 512, amber-d 32, objhal 1024, "
                        "chair500 512, vlguard 256) and its fixed prompt if it has one; see docs/eval.md")
    p.add_argument("--merge-only", action="store_true",
                   help="only merge existing OUT.shard-*.jsonl into OUT (after ranks were run separately)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bpo.safeguard import check_args

    check_args(args, job=("out",))  # --out (and its shards) may not be an input
    from bpo.eval.protocols import apply_preset, check_records
    from bpo.jobs import errors_path, merge_shards

    preset = apply_preset(args, argv)

    if args.merge_only:
        n, missing = merge_shards(args.data, args.out)
        print(f"merged {n} row(s) -> {args.out}" + (f"; {missing} missing, see {errors_path(args.out)}"
                                                     if missing else ""))
        return 0
    from bpo.commands.bootstrap import engine_from_args, settings_from
    from bpo.errors import BpoError
    from bpo.eval.generate import ResponseGenerator, read_eval_records
    from bpo.jobs import dist_context, run_job
    from bpo.models.identity import weights_fingerprint

    if not args.model:
        raise BpoError("pass --model (a model directory or hub id)")
    if args.batch_size < 1:
        raise BpoError(f"--batch-size must be >= 1, not {args.batch_size}")
    rank, world, barrier, device = dist_context()
    records, input_errors = read_eval_records(args.data, on_error=args.on_error, limit=args.limit)
    if not records:  # before the model loads: nothing would be generated
        why = f"{len(input_errors)} skipped; first: {input_errors[0]}" if input_errors else "the file is empty"
        raise BpoError(f"{args.data}: no usable records ({why})")
    if input_errors and rank == 0:
        import sys

        print(f"skipping {len(input_errors)} bad record(s) of {args.data} (first: {input_errors[0]})", file=sys.stderr)
    if preset is not None:
        check_records(preset, records)
    gen = ResponseGenerator(engine_from_args(args, device), settings_from(args), model=args.model, adapter=args.adapter,
                            prompt_field=args.prompt_field, blind=args.blind,
                            preset=preset.name if preset else None, prompt_text=preset.prompt if preset else None)
    # The weights' content, not just their paths: a retrained adapter at the same path must not resume old answers.
    fingerprint = {**gen.fingerprint(), **weights_fingerprint(args.model, args.adapter)}
    summary = run_job(records, gen.process, out=args.out, data=args.data, fingerprint=fingerprint,
                      chunk_size=4 * args.batch_size, on_error=args.on_error, desc="generate",
                      progress=not args.no_progress, rank=rank, world=world, barrier=barrier,
                      input_errors=input_errors, limit=args.limit)
    print(summary.line("generate"))
    return 0

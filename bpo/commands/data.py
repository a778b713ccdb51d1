"""``bpo data``: validate, import and summarise preference record files.

    bpo data validate FILE [--image-root DIR] [--require-rejected] [--no-image-check]
    bpo data import FILE --out OUT.jsonl [--format auto|trl|bootstrapped_po|mmsafe_po|llava_sft|povid|rlaif_v|bpo]
                    [--image-out DIR] [--image-prefix P] [--on-error raise|skip] [--split-turns]
    bpo data stats FILE [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from bpo.errors import BpoError

FORMATS = ("auto", "trl", "bootstrapped_po", "mmsafe_po", "llava_sft", "povid", "rlaif_v", "bpo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpo data", description="Validate, import and summarise record files.")
    sub = p.add_subparsers(dest="action", metavar="{validate,import,stats}")
    sub.required = True

    v = sub.add_parser("validate", help="report every problem in a record JSONL file",
                       description="Print each problem as `file:line: record 'id': message`; exit 1 on errors.")
    v.add_argument("file")
    v.add_argument("--image-root", help="directory the records' image paths are relative to "
                                        "(required unless --no-image-check)")
    v.add_argument("--require-rejected", action="store_true",
                   help="every record needs >= 1 rejected response (training data)")
    v.add_argument("--no-image-check", action="store_true",
                   help="do not open the images; only check their paths are relative and inside the root")

    i = sub.add_parser("import", help="convert TRL / Bootstrapped-PO / MMSafe-PO / LLaVA rows to bpo records",
                       description="Convert a foreign file (.jsonl, .json list or .parquet) to bpo records.")
    i.add_argument("file")
    i.add_argument("--format", default="auto", choices=FORMATS,
                   help="input format; auto detects it from the first row's keys (default: auto)")
    i.add_argument("--out", required=True, help="output JSONL path (written atomically)")
    i.add_argument("--image-out", help="write embedded image bytes here (named by content hash); this "
                                       "directory is then the --image-root of the output")
    i.add_argument("--image-prefix", default="",
                   help="prefix for written image paths, when --image-out is a sub-folder of the image root")
    i.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="stop at the first malformed row (raise) or skip and count it (skip)")
    i.add_argument("--split-turns", action="store_true",
                   help="llava_sft: one record per gpt answer (id suffix -t<k>) instead of the last only")

    s = sub.add_parser("stats", help="counts per source, images, turns, lengths, rejection reasons")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print the numbers as JSON")
    return p


def _validate(args) -> int:
    from bpo.data.validate import validate_file

    if args.image_root is None and not args.no_image_check:
        raise BpoError("pass --image-root DIR (the directory image paths are relative to), or --no-image-check")
    problems = validate_file(args.file, args.image_root, require_rejected=args.require_rejected,
                             check_images=not args.no_image_check)
    for p in problems:
        print(p)
    print(problems.summary(args.file))
    return 1 if problems.errors else 0


def _import(args) -> int:
    from bpo.data.importers import import_file
    from bpo.data.records import write_records

    res = import_file(args.file, args.format, image_out=args.image_out, image_prefix=args.image_prefix,
                      on_error=args.on_error, split_turns=args.split_turns)
    n = write_records(args.out, res.records)
    print(f"imported {n} record(s) from {res.rows} row(s) of {args.file} (format {res.fmt}) -> {args.out}")
    if res.renamed_ids:
        print(f"renamed {res.renamed_ids} repeated id(s) to <id>-dup<k> (original in meta.original_id)")
    if args.image_out:
        print(f"images written to {args.image_out}: {res.images_written} (use it as --image-root)")
    if res.skipped:
        print(f"skipped {len(res.skipped)} row(s):")
        by_reason = Counter(e.reason for e in res.skipped)
        first = {}
        for e in res.skipped:
            first.setdefault(e.reason, e)
        for reason, count in by_reason.most_common():
            print(f"  {count} x {reason} (first: {first[reason].where})")
    return 0


def _stats(args) -> int:
    from bpo.data.records import read_records
    from bpo.data.stats import compute_stats, format_stats

    errors: list = []
    stats = compute_stats(read_records(args.file, on_error="skip", errors=errors))
    stats["invalid_lines"] = len(errors)
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(format_stats(stats, title=str(args.file)))
        if errors:
            print(f"skipped {len(errors)} invalid line(s); run `bpo data validate {args.file}` for details")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bpo.safeguard import check_args

    check_args(args, output_dirs=("image_out",))  # --out may not be the imported file
    return {"validate": _validate, "import": _import, "stats": _stats}[args.action](args)

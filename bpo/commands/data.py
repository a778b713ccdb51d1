"""``bpo data``: validate, import and summarise preference record files.

    bpo data validate FILE [--image-root DIR] [--require-rejected] [--no-image-check]
    bpo data import FILE --out OUT.jsonl [--format auto|trl|bootstrapped_po|mmsafe_po|llava_sft|povid|rlaif_v|bpo]
                    [--image-out DIR] [--image-prefix P] [--on-error raise|skip] [--split-turns]
    bpo data stats FILE [--json]

Every option is also a config key: ``--image-root DIR`` == ``image_root=DIR`` == ``image_root: DIR`` in a
``--config FILE.yaml``; ``bpo data SUB --help-config`` lists the keys.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from bpo.config import CommandGroup, option
from bpo.data.importers import import_file
from bpo.data.records import read_records, write_records
from bpo.data.stats import compute_stats, format_stats
from bpo.data.validate import validate_file
from bpo.errors import BpoError
from bpo.safeguard import check_args

FORMATS = ("auto", "trl", "bootstrapped_po", "mmsafe_po", "llava_sft", "povid", "rlaif_v", "bpo")


@dataclass(kw_only=True)
class ValidateConfig:
    """Print each problem as `file:line: record 'id': message`; exit 1 on errors."""

    file: str = option(positional="1", metavar="FILE", help="record JSONL file to check")
    image_root: str | None = option(None, help="directory the records' image paths are relative to "
                                               "(required unless --no-image-check)")
    require_rejected: bool = option(False, help="every record needs >= 1 rejected response (training data)")
    no_image_check: bool = option(False, help="do not open the images; only check their paths are relative and "
                                              "inside the root")

    def validate(self, require_paths: bool = True) -> None:
        if self.image_root is None and not self.no_image_check:
            raise BpoError("pass --image-root DIR (the directory image paths are relative to), or --no-image-check")


@dataclass(kw_only=True)
class ImportConfig:
    """Convert a foreign file (.jsonl, .json list or .parquet) to bpo records."""

    file: str = option(positional="1", metavar="FILE", help="the file to import")
    format: str = option("auto", choices=FORMATS, help="input format; auto detects it from the first row's keys")
    out: str = option(help="output JSONL path (written atomically)")
    image_out: str | None = option(None, help="write embedded image bytes here (named by content hash); this "
                                              "directory is then the --image-root of the output")
    image_prefix: str = option("", help="prefix for written image paths, when --image-out is a sub-folder of the "
                                        "image root")
    on_error: str = option("raise", choices=("raise", "skip"),
                           help="stop at the first malformed row (raise) or skip and count it (skip)")
    split_turns: bool = option(False, help="llava_sft: one record per gpt answer (id suffix -t<k>) instead of the "
                                           "last only")


@dataclass(kw_only=True)
class StatsConfig:
    """Counts per source, images, turns, lengths, rejection reasons."""

    file: str = option(positional="1", metavar="FILE", help="record JSONL file")
    json: bool = option(False, help="print the numbers as JSON")


def _validate(args: ValidateConfig) -> int:
    problems = validate_file(args.file, args.image_root, require_rejected=args.require_rejected,
                             check_images=not args.no_image_check)
    for p in problems:
        print(p)
    print(problems.summary(args.file))
    return 1 if problems.errors else 0


def _import(args: ImportConfig) -> int:
    check_args(args, output_dirs=("image_out",))  # --out may not be the imported file

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


def _stats(args: StatsConfig) -> int:
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


DESCRIPTION = "Validate, import and summarise record files."
TABLE = {
    "validate": (ValidateConfig, _validate, "report every problem in a record JSONL file"),
    "import": (ImportConfig, _import, "convert TRL / Bootstrapped-PO / MMSafe-PO / LLaVA rows to bpo records"),
    "stats": (StatsConfig, _stats, "counts per source, images, turns, lengths, rejection reasons"),
}


_GROUP = CommandGroup(TABLE, prog="bpo data", description=DESCRIPTION)
main, check = _GROUP.main, _GROUP.check

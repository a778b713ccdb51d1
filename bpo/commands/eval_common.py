"""What every ``bpo eval`` subcommand shares: the options of a scored run and the report it writes.

Config classes here hold no logic and import nothing heavy (``bpo --help`` stays instant); the scoring
lives in :mod:`bpo.eval`. Attribute names are the old argparse dests, so ``cfg.responses`` reads as
``args.responses`` did; the judge options are one nested section, ``cfg.judge`` (``judge.model=...`` or
``--judge-model``), declared once in :class:`bpo.eval.judging.JudgeSection`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpo.config import option


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
    from bpo.eval.protocols import for_args, format_protocol
    from bpo.eval.report import build_report, write_report

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

"""``bpo iterate --config configs/iterative_bpo.yaml [key=value ...]``: rounds of Bootstrapped PO.

Round r bootstraps negatives from the round r-1 policy (base + adapter), trains round r from the round
r-1 adapter (pi_ref: the round r-1 policy, or the base with reference=base), and evaluates CHAIR (and
POPE) on a held-out set. Resumable: rerun the same command after a kill. Writes report.md, rounds.json
and rounds.png under `out`. Method and settings: docs/iterative.md.
"""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bpo iterate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (e.g. configs/iterative_bpo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rounds=3 model=PATH train.run.max_steps=60")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.add_argument("--force", action="store_true", help="redo every round")
    p.add_argument("--dry-run", action="store_true", help="print the command lines of every round and exit")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the rounds on disk")
    args = p.parse_args(argv)
    from bpo.config import format_help, load_config
    from bpo.iterative.rounds import IterateConfig, run_iterate

    if args.help_config:
        print(format_help(IterateConfig))
        return 0
    cfg = load_config(IterateConfig, args.config, args.overrides)
    if args.report_only:
        from bpo.iterative.report import write_iteration_report
        from bpo.iterative.rounds import build_steps, write_round_inputs

        cfg.validate()
        result = write_iteration_report(cfg, build_steps(cfg, write_round_inputs(cfg))[1])
    else:
        from bpo.cli import main as run_command

        result = run_iterate(cfg, run_command=run_command, force=args.force, dry_run=args.dry_run)
    for claim in result.get("verdicts", []):
        print(claim["text"])
    if result.get("report"):
        print(f"report: {result['report']}")
    return 0

"""``bpo iterate --config configs/recipes/iterative_bpo.yaml [key=value ...]``: rounds of Bootstrapped PO.

Round r bootstraps negatives from the round r-1 policy (base + adapter), trains round r from the round
r-1 adapter (pi_ref: the round r-1 policy, or the base with reference=base), and evaluates CHAIR (and
POPE) on a held-out set. Resumable: rerun the same command after a kill. Writes report.md, rounds.json
and rounds.png under `out`. Method and settings: docs/iterative.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bpo.config import Command, option
from bpo.iterative.rounds import IterateConfig

EPILOG = """examples:
  bpo iterate --config configs/recipes/iterative_bpo.yaml rounds=3 sft=data/sft.jsonl heldout=data/halbench.jsonl
  bpo iterate --config configs/recipes/iterative_bpo.yaml train.run.max_steps=60 --dry-run
  bpo iterate --help-config      (every key with its default and meaning)
"""


@dataclass
class IterateCommand(IterateConfig):
    """The rounds' config (:class:`IterateConfig`, the keys of the YAML) plus how this invocation runs them."""

    force: bool = option(False, help="redo every round")
    dry_run: bool = option(False, help="print the command lines of every round and exit")
    report_only: bool = option(False, help="rewrite the report from the rounds on disk")

    def rounds_config(self) -> IterateConfig:
        """The config alone (what rounds.json records), without the run-mode switches."""
        return IterateConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(IterateConfig)})


def _run(cmd: IterateCommand) -> int:
    cfg = cmd.rounds_config()
    if cmd.report_only:
        from bpo.iterative.report import write_iteration_report
        from bpo.iterative.rounds import build_steps, write_round_inputs

        result = write_iteration_report(cfg, build_steps(cfg, write_round_inputs(cfg))[1])
    else:
        from bpo.cli import main as run_command
        from bpo.iterative.rounds import run_iterate

        result = run_iterate(cfg, run_command=run_command, force=cmd.force, dry_run=cmd.dry_run)
    for claim in result.get("verdicts", []):
        print(claim["text"])
    if result.get("report"):
        print(f"report: {result['report']}")
    return 0


_COMMAND = Command(IterateCommand, _run, prog="bpo iterate", description=__doc__, epilog=EPILOG)
parse, main, check = _COMMAND.parse, _COMMAND.main, _COMMAND.check

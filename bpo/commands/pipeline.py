"""``bpo pipeline RECIPE.yaml [name=value ...]``: run a recipe of bpo commands, resumably."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bpo pipeline", description=__doc__)
    p.add_argument("recipe", help="pipeline YAML (e.g. configs/blind_po.yaml)")
    p.add_argument("vars", nargs="*", help="variable overrides name=value")
    p.add_argument("--only", default="", help="comma-separated step names to run")
    p.add_argument("--force", action="store_true", help="rerun steps even if up to date")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--state-dir", default=None, help="where step stamps go (default: <out var>/.pipeline or "
                                                      "./.bpo_pipeline)")
    args = p.parse_args(argv)
    from bpo.cli import COMMANDS
    from bpo.cli import main as run_command
    from bpo.pipeline import load_recipe, run_recipe

    recipe = load_recipe(args.recipe, args.vars, commands=COMMANDS)
    if recipe.description:
        print(recipe.description.strip())
    state = Path(args.state_dir) if args.state_dir else Path(recipe.vars.get("out", ".")) / ".pipeline"
    only = [s for s in args.only.split(",") if s]
    run_recipe(recipe, state_dir=state, run_command=run_command, only=only, force=args.force, dry_run=args.dry_run)
    return 0

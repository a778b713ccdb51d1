"""``bpo pipeline RECIPE.yaml [name=value ...]``: run a recipe of bpo commands, resumably.

Every step's options are checked before the first step runs (a typo in the last step costs nothing).
``name=value`` sets a recipe variable, except for this command's own keys (``recipe``, ``vars``, ``only``, ``force``,
``dry_run``, ``state_dir``; see --help-config), which configure the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bpo.cli import COMMANDS, check_command
from bpo.cli import main as run_command
from bpo.config import Command, option
from bpo.errors import BpoError
from bpo.pipeline import load_recipe, run_recipe

EPILOG = """examples:
  bpo pipeline configs/recipes/blind_po.yaml model=llava-hf/llava-1.5-7b-hf out=runs/blind_po --dry-run
  bpo pipeline configs/recipes/blind_po.yaml out=runs/blind_po --only train,generate
"""


@dataclass
class PipelineConfig:
    recipe: str = option(help="pipeline YAML (e.g. configs/recipes/blind_po.yaml)", positional="1",
                         metavar="RECIPE")
    vars: list[str] = option(default_factory=list, help="recipe variable overrides name=value", positional="*",
                             metavar="NAME=VALUE")
    only: str = option("", help="comma-separated step names to run (default: all)")
    force: bool = option(False, help="rerun steps even if up to date")
    dry_run: bool = option(False, help="print the commands and exit")
    state_dir: str | None = option(None, help="where step stamps go (default: <out var>/.pipeline or "
                                              "./.pipeline)")


def _run(cfg: PipelineConfig) -> int:
    recipe = load_recipe(cfg.recipe, cfg.vars, commands=COMMANDS, check=check_command)
    if recipe.description:
        print(recipe.description.strip())
    state = Path(cfg.state_dir) if cfg.state_dir else Path(recipe.vars.get("out", ".")) / ".pipeline"
    only = [s for s in cfg.only.split(",") if s]
    unknown = [s for s in only if s not in {step.name for step in recipe.steps}]
    if unknown:
        raise BpoError(f"{cfg.recipe}: --only {unknown[0]!r} is not a step of this recipe (steps: "
                       f"{', '.join(step.name for step in recipe.steps)})")
    run_recipe(recipe, state_dir=state, run_command=run_command, only=only, force=cfg.force, dry_run=cfg.dry_run)
    return 0


_COMMAND = Command(PipelineConfig, _run, prog="bpo pipeline", description=__doc__, epilog=EPILOG)
parse, main, check = _COMMAND.parse, _COMMAND.main, _COMMAND.check

"""Recipes that chain public ``bpo`` commands: ``bpo pipeline RECIPE.yaml [var=value ...]``.

A recipe is YAML with ``vars`` (defaults, overridable on the command line) and ``steps``; each step
runs one ``bpo`` command line with ``${var}`` substituted. A step whose declared ``outputs`` exist
and whose command is unchanged since it last succeeded is skipped, so a killed pipeline restarts
where it stopped (the commands themselves resume too). Once a step runs, every later step runs too
(its inputs may have changed), and a step that had finished before starts over: its declared outputs
and their resumable-job files are removed first, so no answer of older weights or data is resumed. A
step that never finished (killed) resumes unless something before it ran. Steps run in-process
through the same CLI entry point users type, so a recipe is exactly a list of commands a user could run by hand.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bpo.config import load_yaml
from bpo.errors import BpoError
from bpo.jobs import errors_path, job_path, shard_files
from bpo.safeguard import same_file

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Step:
    name: str
    run: str
    outputs: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    path: str
    vars: dict[str, str]
    steps: list[Step]
    description: str = ""


def substitute(text: str, variables: dict[str, str], where: str) -> str:
    def repl(m):
        key = m.group(1)
        if key not in variables:
            raise BpoError(f"{where}: unknown variable ${{{key}}}; define it under vars: or pass {key}=VALUE")
        return str(variables[key])

    for _ in range(5):  # vars may refer to other vars
        new = _VAR.sub(repl, text)
        if new == text:
            return new
        text = new
    return text


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, commands: Iterable[str],
                check: Callable[[list[str]], object] | None = None) -> Recipe:
    """Read a recipe; ``commands`` are the names a step may run (the face passes its own table, so this
    module never imports the CLI that calls it). ``check(argv)``, when given, parses each step's command line
    without running it (the face's ``check_command``), so a typo in the last step fails before the first runs."""
    known = sorted(commands)

    data = load_yaml(path)
    if "steps" not in data or not isinstance(data["steps"], list) or not data["steps"]:
        raise BpoError(f"{path}: a pipeline recipe needs a non-empty 'steps:' list")
    variables = {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise BpoError(f"pipeline override {item!r} must look like name=value")
        if key not in variables:
            raise BpoError(f"{path}: unknown variable {key!r} (known: {', '.join(sorted(variables))})")
        variables[key] = value
    variables = {k: substitute(v, variables, f"{path}: vars.{k}") for k, v in variables.items()}
    steps = []
    for i, raw in enumerate(data["steps"]):
        where = f"{path}: steps[{i}]"
        if not isinstance(raw, dict) or "run" not in raw:
            raise BpoError(f"{where} needs 'run: <bpo command line>'")
        name = str(raw.get("name", f"step{i}"))
        run = substitute(" ".join(str(raw["run"]).split()), variables, where)
        first = shlex.split(run)[0] if run.strip() else ""
        if first not in known:
            raise BpoError(f"{where} ({name}): {first!r} is not a bpo command (known: {', '.join(known)})")
        outputs = [substitute(str(o), variables, where) for o in raw.get("outputs", [])]
        steps.append(Step(name=name, run=run, outputs=outputs))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise BpoError(f"{path}: step names must be unique")
    check_recipe_outputs(str(path), steps)
    if check is not None:
        check_steps(str(path), steps, check)
    return Recipe(path=str(path), vars=variables, steps=steps, description=str(data.get("description", "")))


def check_steps(path: str, steps: list[Step], check: Callable[[list[str]], object]) -> None:
    """Every step's options, before anything runs: an unknown option, a bad value or a missing required one
    fails here, naming the recipe, the step and the option. Files that earlier steps will make need not exist
    (the commands check with ``require=False``)."""
    for i, step in enumerate(steps, 1):
        try:
            check(shlex.split(step.run))
        except BpoError as exc:
            raise BpoError(f"{path}: step {i} ({step.name!r}): {exc}; fix the step's options (nothing has run)") \
                from None


_OUT_FLAGS = ("--out", "--details", "--report")


def _step_paths(step: Step) -> tuple[list[str], list[str]]:
    """(outputs, other path-like arguments) of one step: declared outputs plus its --out/--details/--report."""
    tokens = shlex.split(step.run)
    outs, others = list(step.outputs), []
    for i, tok in enumerate(tokens[1:], 1):
        flag, eq, val = tok.partition("=")
        if eq and flag in _OUT_FLAGS:
            outs.append(val)
        elif tokens[i - 1] in _OUT_FLAGS:
            outs.append(tok)
        else:  # a positional, an option's value, --flag=value or a train override key=value
            others.append(val if eq else tok)
    return outs, others


def check_recipe_outputs(path: str, steps: list[Step]) -> None:
    """Before anything runs: no step may write over a recipe input (a file a step reads that no earlier step makes)."""
    made: list[str] = []  # outputs of the steps so far
    read: list[tuple[str, str]] = []  # (step name, path) of recipe inputs read so far
    for step in steps:
        outs, others = _step_paths(step)
        for p in others:
            if Path(p).is_file() and not any(same_file(p, m) for m in made):
                read.append((step.name, p))
        for o in outs:
            for name, p in read:
                if same_file(o, p):
                    raise BpoError(f"{path}: step {step.name!r} writes {o}, which is the recipe input {p} read by "
                                   f"step {name!r}; bpo never overwrites its input: give the step another output path")
        made.extend(outs)


def _stamp(state_dir: Path, step: Step) -> Path:
    return state_dir / f"{step.name}.done"


def _digest(step: Step) -> str:
    return hashlib.sha256(step.run.encode()).hexdigest()


def _clear_outputs(step: Step) -> list[Path]:
    """Remove a step's declared outputs (files, or whole declared folders) and the resumable-job files beside
    them; returns what was removed."""
    removed = []
    for o in step.outputs:
        out = Path(o)
        if out.is_dir():  # a declared output folder (a training run: its checkpoints must not be resumed)
            shutil.rmtree(out)
            removed.append(out)
            continue
        for f in [out, job_path(out), errors_path(out), *shard_files(out), *shard_files(out, ".errors.jsonl")]:
            if f.is_file():
                f.unlink()
                removed.append(f)
    return removed


def run_recipe(recipe: Recipe, *, state_dir: Path, run_command: Callable[[list[str]], int],
               only: list[str] | None = None, force: bool = False, dry_run: bool = False, log=print) -> list[dict]:
    """Run the steps not up to date. ``run_command(argv) -> exit code`` runs one ``bpo`` command in-process;
    the face (``bpo.cli.main``) hands itself down, so workflows below it never import it."""

    state_dir.mkdir(parents=True, exist_ok=True)
    results = []
    upstream_ran = False
    for i, step in enumerate(recipe.steps, 1):
        if only and step.name not in only:
            continue
        stamp = _stamp(state_dir, step)
        fresh = stamp.exists() and stamp.read_text().strip() == _digest(step)
        done = fresh and all(Path(o).exists() for o in step.outputs) and not force and not upstream_ran
        head = f"[{i}/{len(recipe.steps)}] {step.name}"
        if done:
            log(f"{head}: up to date, skipped")
            results.append({"step": step.name, "status": "skipped"})
            continue
        log(f"{head}: bpo {step.run}")
        inputs_changed, upstream_ran = upstream_ran, True
        if dry_run:
            results.append({"step": step.name, "status": "planned"})
            continue
        if stamp.exists() or force or inputs_changed:
            removed = _clear_outputs(step)  # a finished step, or new inputs: start over, do not resume
            if removed:
                log(f"{head}: starting over (removed {len(removed)} earlier output file(s))")
            stamp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        code = run_command(shlex.split(step.run))
        dt = time.perf_counter() - t0
        if code != 0:
            raise BpoError(f"pipeline step {step.name!r} failed (exit {code}); fix it and rerun the same "
                           "command: finished steps are skipped")
        missing = [o for o in step.outputs if not Path(o).exists()]
        if missing:
            raise BpoError(f"pipeline step {step.name!r} did not produce {missing[0]}")
        stamp.write_text(_digest(step) + "\n")
        results.append({"step": step.name, "status": "ran", "seconds": round(dt, 2)})
        log(f"{head}: done in {dt:.1f}s")
    return results

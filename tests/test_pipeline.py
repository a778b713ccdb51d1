"""Pipeline recipes: variables, validation, resumable steps; every shipped recipe loads."""

from pathlib import Path

import pytest

from bpo.cli import COMMANDS
from bpo.cli import main as cli
from bpo.errors import BpoError
from bpo.pipeline import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_blind_po_recipe_loads_and_substitutes():
    r = load_recipe(ROOT / "configs/recipes/blind_po.yaml", ["model=M", "out=O"], commands=COMMANDS)
    assert [s.name for s in r.steps] == ["build", "blind", "train", "generate", "eval"]
    assert "bootstrap blind --model M --data O/mmsafe.jsonl" in r.steps[1].run
    assert "data.sources=human,blind" in r.steps[2].run
    assert r.steps[3].run.startswith("generate --model O/train/model")
    lora = load_recipe(ROOT / "configs/recipes/blind_po.yaml", ["trained=--model M --adapter ${out}/train/adapter"], commands=COMMANDS)
    assert "--adapter runs/blind_po/train/adapter" in lora.steps[3].run


def test_recipe_errors(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("vars: {a: 1}\nsteps:\n  - {name: x, run: 'data stats ${b}'}\n")
    with pytest.raises(BpoError, match=r"unknown variable \$\{b\}"):
        load_recipe(f, commands=COMMANDS)
    f.write_text("vars: {a: 1}\nsteps:\n  - {name: x, run: 'trian ${a}'}\n")
    with pytest.raises(BpoError, match="'trian' is not a bpo command"):
        load_recipe(f, commands=COMMANDS)
    f.write_text("vars: {a: 1}\nsteps:\n  - {name: x, run: 'data stats ${a}'}\n")
    with pytest.raises(BpoError, match="unknown variable 'c'"):
        load_recipe(f, ["c=2"], commands=COMMANDS)


def test_steps_run_once_and_rerun_when_changed(tmp_path, pref_file, capsys):
    f = tmp_path / "r.yaml"
    f.write_text(
        "vars: {data: x, out: y}\n"
        "steps:\n"
        "  - name: stats\n"
        "    run: data stats ${data} --json\n"
        "  - name: import\n"
        "    run: data import ${data} --format bpo --out ${out}/copy.jsonl\n"
        "    outputs: ['${out}/copy.jsonl']\n")
    out = tmp_path / "o"
    state = out / ".pipeline"
    res = run_recipe(load_recipe(f, [f"data={pref_file}", f"out={out}"], commands=COMMANDS), state_dir=state, run_command=cli, log=lambda *_: None)
    assert [r["status"] for r in res] == ["ran", "ran"] and (out / "copy.jsonl").exists()
    res = run_recipe(load_recipe(f, [f"data={pref_file}", f"out={out}"], commands=COMMANDS), state_dir=state, run_command=cli, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "skipped"]
    (out / "copy.jsonl").unlink()  # a lost output makes its step run again
    res = run_recipe(load_recipe(f, [f"data={pref_file}", f"out={out}"], commands=COMMANDS), state_dir=state, run_command=cli, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "ran"]
    # through the CLI, with a failing step: one-line error naming the step
    bad = tmp_path / "bad.yaml"
    bad.write_text("vars: {out: o}\nsteps:\n  - {name: broken, run: 'data stats /no/such/file.jsonl'}\n")
    assert cli(["pipeline", str(bad), f"out={out}"]) == 2
    assert "pipeline step 'broken' failed" in capsys.readouterr().err


def test_later_steps_rerun_from_scratch_after_an_earlier_step_ran(tmp_path, pref_file):
    """Step 1's command changes -> it runs, and step 2 (unchanged) runs too, its old outputs and job files removed
    first; a step that never finished keeps its shards for resuming when nothing before it ran."""
    f = tmp_path / "r.yaml"
    f.write_text(
        "vars: {data: x, out: y, tag: a}\n"
        "steps:\n"
        "  - name: first\n"
        "    run: data import ${data} --format bpo --out ${out}/first-${tag}.jsonl\n"
        "    outputs: ['${out}/first-${tag}.jsonl']\n"
        "  - name: second\n"
        "    run: data import ${data} --format bpo --out ${out}/second.jsonl\n"
        "    outputs: ['${out}/second.jsonl']\n")
    out = tmp_path / "o"
    state = out / ".pipeline"

    def run(tag):
        recipe = load_recipe(f, [f"data={pref_file}", f"out={out}", f"tag={tag}"], commands=COMMANDS)
        return [r["status"] for r in run_recipe(recipe, state_dir=state, run_command=cli, log=lambda *_: None)]

    assert run("a") == ["ran", "ran"]
    stale = [out / "second.jsonl.shard-0.jsonl", out / "second.jsonl.job.json"]
    for p in stale:
        p.write_text("{}\n")
    assert run("a") == ["skipped", "skipped"] and all(p.exists() for p in stale)
    assert run("b") == ["ran", "ran"]  # second's command is unchanged, but its input step ran
    assert not any(p.exists() for p in stale) and (out / "second.jsonl").exists()
    # a killed step (no stamp) with nothing run before it: its job files are left for the command to resume
    (state / "second.done").unlink()
    for p in stale:
        p.write_text("{}\n")
    assert run("b") == ["skipped", "ran"] and all(p.exists() for p in stale)

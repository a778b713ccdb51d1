"""Pipeline recipes: variables, validation, resumable steps; every shipped recipe loads."""

from pathlib import Path

import pytest

from bpo.cli import COMMANDS, check_command
from bpo.cli import main as cli
from bpo.commands.iterate import main as cli_iterate
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


def test_a_typo_in_step_3_fails_before_step_1_runs(tmp_path, pref_file, capsys):
    """The whole recipe is checked first: the error names the recipe file, the step and the option, and step 1's
    output is never written. Step 2 reads step 1's output, which does not exist at check time: not an error."""
    out = tmp_path / "o"
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(
        "vars: {data: x, out: y}\n"
        "steps:\n"
        "  - name: copy\n"
        "    run: data import ${data} --format bpo --out ${out}/copy.jsonl\n"
        "    outputs: ['${out}/copy.jsonl']\n"
        "  - name: rounds\n"
        "    run: iterate model=m sft=${out}/copy.jsonl heldout=${out}/copy.jsonl out=${out}/it --dry-run\n"
        "  - name: curves\n"
        "    run: analyze curves ${out}/it --out ${out}/curves --windw 5\n")
    assert cli(["pipeline", str(recipe), f"data={pref_file}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {recipe}: step 3 ('curves'): ") and "--windw" in err
    assert not (out / "copy.jsonl").exists() and not (out / ".pipeline").exists()
    # the same typo as key=value gets a suggestion
    recipe.write_text(recipe.read_text().replace("--windw 5", "windw=5"))
    with pytest.raises(BpoError, match=r"typo.yaml: step 3 \('curves'\): .*did you mean 'window'"):
        load_recipe(recipe, [f"data={pref_file}", f"out={out}"], commands=COMMANDS, check=check_command)
    # fixed: it loads, and the outputs step 2 will read only when step 1 has run do not fail the check
    recipe.write_text(recipe.read_text().replace(" windw=5", " window=5"))
    steps = load_recipe(recipe, [f"data={pref_file}", f"out={out}"], commands=COMMANDS, check=check_command).steps
    assert [s.name for s in steps] == ["copy", "rounds", "curves"] and not (out / "copy.jsonl").exists()
    with pytest.raises(BpoError, match="sft: .* does not exist"):  # ...which a full check (require=True) refuses
        cli_iterate(["model=m", f"sft={out}/copy.jsonl", f"heldout={out}/copy.jsonl", "--dry-run"])


def test_check_command_without_a_check_says_so_and_passes(monkeypatch, capsys):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "fake_command", types.ModuleType("fake_command"))
    monkeypatch.setitem(COMMANDS, "fake", ("fake_command", "a command with no check yet"))
    check_command(["fake", "--anything"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`bpo fake` cannot check its options" in err
    with pytest.raises(BpoError, match="'nope' is not a bpo command"):
        check_command(["nope"])


def test_pipeline_help_config_and_own_options(tmp_path, pref_file, capsys):
    assert cli(["pipeline", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("recipe", "vars", "only", "force", "dry_run", "state_dir"):
        assert f"  {key} " in out
    f = tmp_path / "r.yaml"
    f.write_text("vars: {data: x}\nsteps:\n  - {name: a, run: 'data stats ${data}'}\n"
                 "  - {name: b, run: 'data stats ${data} --json'}\n")
    # `only=` / `--only` configure the run; every other name=value is a recipe variable
    assert cli(["pipeline", str(f), f"data={pref_file}", "only=b", f"state_dir={tmp_path / 's'}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "[2/2] b: bpo data stats" in printed and "[1/2]" not in printed
    assert cli(["pipeline", str(f), "--only", "c", "--dry-run"]) == 2
    assert "--only 'c' is not a step of this recipe (steps: a, b)" in capsys.readouterr().err

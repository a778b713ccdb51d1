"""Pipeline recipes: variables, validation, resumable steps; every shipped recipe loads."""

from pathlib import Path

import pytest

from bpo.cli import main as cli
from bpo.errors import BpoError
from bpo.pipeline import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_blind_po_recipe_loads_and_substitutes():
    r = load_recipe(ROOT / "configs/blind_po.yaml", ["model=M", "out=O"])
    assert [s.name for s in r.steps] == ["build", "blind", "train", "generate", "eval"]
    assert "bootstrap blind --model M --data O/mmsafe.jsonl" in r.steps[1].run
    assert "data.sources=human,blind" in r.steps[2].run
    assert r.steps[3].run.startswith("generate --model O/train/model")
    lora = load_recipe(ROOT / "configs/blind_po.yaml", ["trained=--model M --adapter ${out}/train/adapter"])
    assert "--adapter runs/blind_po/train/adapter" in lora.steps[3].run


def test_recipe_errors(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("vars: {a: 1}\nsteps:\n  - {name: x, run: 'data stats ${b}'}\n")
    with pytest.raises(BpoError, match=r"unknown variable \$\{b\}"):
        load_recipe(f)
    f.write_text("vars: {a: 1}\nsteps:\n  - {name: x, run: 'trian ${a}'}\n")
    with pytest.raises(BpoError, match="'trian' is not a bpo command"):
        load_recipe(f)
    f.write_text("vars: {a: 1}\nsteps:\n  - {name: x, run: 'data stats ${a}'}\n")
    with pytest.raises(BpoError, match="unknown variable 'c'"):
        load_recipe(f, ["c=2"])


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
    res = run_recipe(load_recipe(f, [f"data={pref_file}", f"out={out}"]), state_dir=state, log=lambda *_: None)
    assert [r["status"] for r in res] == ["ran", "ran"] and (out / "copy.jsonl").exists()
    res = run_recipe(load_recipe(f, [f"data={pref_file}", f"out={out}"]), state_dir=state, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "skipped"]
    (out / "copy.jsonl").unlink()  # a lost output makes its step run again
    res = run_recipe(load_recipe(f, [f"data={pref_file}", f"out={out}"]), state_dir=state, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "ran"]
    # through the CLI, with a failing step: one-line error naming the step
    bad = tmp_path / "bad.yaml"
    bad.write_text("vars: {out: o}\nsteps:\n  - {name: broken, run: 'data stats /no/such/file.jsonl'}\n")
    assert cli(["pipeline", str(bad), f"out={out}"]) == 2
    assert "pipeline step 'broken' failed" in capsys.readouterr().err

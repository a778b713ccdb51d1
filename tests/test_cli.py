"""The dispatcher: instant --help, one-line errors."""

import subprocess
import sys
import time

import pytest

from bpo.cli import COMMANDS, main


def test_help_is_instant_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); from bpo.cli import main; main(['--help']); "
            "print(round(time.perf_counter() - t, 3)); "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    lines = out.strip().splitlines()
    assert lines[-1] == "[]", "bpo --help must not import torch/transformers/matplotlib"
    assert float(lines[-2]) < 0.5
    assert wall < 5  # whole interpreter start; generous for slow CI disks
    for name in COMMANDS:
        assert name in out


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_train_bad_config_is_one_line(capsys, tmp_path):
    assert main(["train", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bpo train: unknown config key 'optim.lrr'") and "\n" not in err


def test_train_help_config(capsys):
    assert main(["train", "--help-config"]) == 0
    assert "loss.beta" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_prints_its_config_keys(name, capsys):
    """Every command (for a group: every subcommand) lists its options as config keys with --help-config."""
    assert main([name, "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "[default:" in out, out[:300]


def test_pipeline_reads_variables_after_flags(tmp_path, capsys):
    """`bpo pipeline RECIPE --dry-run name=value`: the positional list may follow a flag."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("vars:\n  out: x\nsteps:\n  - name: s\n    run: data stats ${out}/records.jsonl\n")
    assert main(["pipeline", str(recipe), "--dry-run", f"out={tmp_path}"]) == 0
    assert f"{tmp_path}/records.jsonl" in capsys.readouterr().out

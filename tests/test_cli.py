"""The dispatcher: instant --help, one-line errors."""

import subprocess
import sys
import time

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

"""Every `bpo train` example in the docs of the train config and the train command parses, so none can rot."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import bpo.commands.train as train_command
import bpo.train.config as train_config
from bpo.errors import BpoError

ROOT = Path(__file__).resolve().parents[2]


def example_lines() -> list[str]:
    """The argument lists after ``bpo train`` in config.py's docstring and the command's docstring and epilog."""
    texts = [train_config.__doc__, train_command.__doc__, train_command.HELP_EPILOG]
    lines = []
    for text in texts:
        for line in text.splitlines():
            m = re.search(r"\bbpo train\b(.*)", line.strip().strip("`"))
            if not m:
                continue
            args = re.split(r"\s{2,}\(|``", m.group(1))[0].strip()  # drop a trailing "   (comment)" or ``
            if args:  # not prose that merely names the command
                lines.append(args)
    return lines


def test_the_examples_are_found():
    found = example_lines()
    assert len(found) >= 6, found
    assert any("run.output_dir=" in args for args in found)  # the config docstring's own example


@pytest.mark.parametrize("args", example_lines())
def test_every_example_parses(args, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the examples name configs/ relative to a checkout
    # the module docstring's synopsis, with its placeholders filled in
    args = args.replace("recipe.yaml", "configs/train/tiny_cpu.yaml").replace("[key=value ...]", "optim.lr=1e-6")
    argv = shlex.split(args)
    train_command.check(argv)
    if "--help-config" not in argv:
        train_command.check([*argv, "--dry-run"])


def test_a_wrong_section_is_still_refused(monkeypatch):
    """The docstring once said ``train.output_dir``: the section is ``run``, and the check catches it."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(BpoError, match="unknown config key 'train'"):
        train_command.check(["--config", "configs/train/llava15_7b_bpo.yaml", "train.output_dir=runs/x"])


def test_dry_run_prints_the_training_config_alone(tmp_path, capsys):
    from bpo.cli import main

    assert main(["train", "model.name=m", f"data.train={tmp_path / 'p.jsonl'}", "--dry-run", "lora.r=4"]) == 0
    out = capsys.readouterr().out
    assert "  r: 4\n" in out and "dry_run:" not in out  # what the trainer would write to config.yaml


def test_check_skips_paths_but_main_needs_them(capsys):
    train_command.check(["loss.type=sft"])  # no model.name / data.train yet: a pipeline step fills them later
    with pytest.raises(BpoError, match="model.name is required"):
        train_command.main(["loss.type=sft"])

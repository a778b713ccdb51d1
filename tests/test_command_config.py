"""Command configs (bpo.config.parse_command): flags, key=value and YAML are three spellings of one option."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bpo.config import option, parse_command, run_subcommands
from bpo.errors import BpoError


@dataclass
class Judge:
    model: str | None = option(None, help="judge model")
    retries: int = option(2, help="how many retries")


@dataclass
class Gen:
    model: str = option(help="model directory")
    runs: list[str] = option(default_factory=list, help="run folders", positional="*")
    batch_size: int = option(8, help="batch size")
    blind: bool = option(False, help="drop the images")
    engine: str = option("hf", help="engine", choices=("hf", "vllm"))
    judge: Judge = field(default_factory=Judge, metadata={"help": "the judge"})

    def validate(self, require_paths: bool = True):
        if self.batch_size < 1:
            raise BpoError(f"batch_size must be >= 1, not {self.batch_size}")
        if require_paths and self.model == "missing-dir":
            raise BpoError("model directory not found")


def parse(argv):
    return parse_command(Gen, argv, prog="bpo t")


def test_three_spellings_agree(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: M\nbatch_size: 4\njudge:\n  retries: 5\n")
    by_flags = parse(["--model", "M", "--batch-size", "4", "--judge-retries", "5"])
    by_keys = parse(["model=M", "batch_size=4", "judge.retries=5"])
    by_yaml = parse(["--config", str(yaml_file)])
    assert by_flags == by_keys == by_yaml
    assert by_flags.batch_size == 4 and by_flags.judge.retries == 5 and by_flags.engine == "hf"


def test_command_line_beats_yaml_and_positionals_and_bools(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: M\nblind: true\nbatch_size: 2\n")
    cfg = parse(["--config", str(yaml_file), "a", "b", "--no-blind", "batch_size=3"])
    assert (cfg.runs, cfg.blind, cfg.batch_size) == (["a", "b"], False, 3)


@pytest.mark.parametrize("argv, message", [
    ([], "missing --model (or model=...)"),
    (["--model", "m", "--engine", "tf"], "'tf' is not one of hf, vllm"),
    (["--model", "m", "batchsize=3"], "did you mean 'batch_size'"),
    (["--model", "m", "--batch-size", "x"], "cannot read 'x' as int"),
    (["--model", "m", "batch_size=0"], "batch_size must be >= 1"),
])
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(BpoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(argv)


def test_require_false_skips_path_checks():
    with pytest.raises(BpoError, match="not found"):
        parse(["--model", "missing-dir"])
    assert parse_command(Gen, ["--model", "missing-dir"], prog="t", require=False).model == "missing-dir"


def test_help_config_lists_every_key(capsys):
    assert parse(["--help-config"]) is None
    out = capsys.readouterr().out
    for key in ("model", "runs", "batch_size", "blind", "engine", "judge.model", "judge.retries"):
        assert f"  {key} " in out


def test_subcommands_dispatch_and_suggest(capsys):
    seen = []
    table = {"gen": (Gen, lambda cfg: seen.append(cfg) or 0, "generate")}
    assert run_subcommands(["gen", "--model", "m"], prog="bpo t", description="d", table=table) == 0
    assert seen[0].model == "m"
    with pytest.raises(BpoError, match="did you mean 'gen'"):
        run_subcommands(["gne"], prog="bpo t", description="d", table=table)
    assert run_subcommands([], prog="bpo t", description="d", table=table) == 0
    assert "gen" in capsys.readouterr().out

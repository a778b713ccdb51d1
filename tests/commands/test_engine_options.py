"""Typed configs of ``bpo bootstrap``, ``bpo generate``, ``bpo data`` and ``bpo safety``: three spellings of each
option (flag, key=value, YAML), ``--help-config``, one-line errors, and ``check(argv)`` for ``bpo pipeline``."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bpo.cli import main
from bpo.commands import bootstrap, data, generate, safety
from bpo.commands.engine_options import GenerationOptions
from bpo.config import leaf_fields, parse_command
from bpo.errors import BpoError

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = [("bootstrap", bootstrap.TABLE), ("data", data.TABLE), ("safety", safety.TABLE)]


@pytest.mark.parametrize("argv, cls", [([cmd, sub], entry[0]) for cmd, table in SUBCOMMANDS
                                       for sub, entry in table.items()] + [(["generate"], generate.GenerateConfig)],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_help_config_lists_every_key(argv, cls, capsys):
    assert main([*argv, "--help-config"]) == 0
    out = capsys.readouterr().out
    keys = [k for k, _, _ in leaf_fields(cls)]
    assert keys and all(f"\n  {k} " in out for k in keys), [k for k in keys if f"\n  {k} " not in out]


def test_weaken_flag_key_and_yaml_agree(tmp_path):
    (tmp_path / "img").mkdir()
    root = str(tmp_path / "img")
    yaml_file = tmp_path / "weaken.yaml"
    yaml_file.write_text(f"model: M\ndata: in.jsonl\nimage_root: {root}\nout: o.jsonl\nsteps: 300,900\n"
                         "mode: contrast\nalpha: 0.5\nbatch_size: 2\nstop: ['###', 'END']\nno_progress: true\n")
    flags = ["--model", "M", "--data", "in.jsonl", "--image-root", root, "--out", "o.jsonl", "--steps", "300,900",
             "--mode", "contrast", "--alpha", "0.5", "--batch-size", "2", "--stop", "###", "--stop", "END",
             "--no-progress"]
    keys = ["model=M", "data=in.jsonl", f"image_root={root}", "out=o.jsonl", "steps=300,900", "mode=contrast",
            "alpha=0.5", "batch_size=2", "stop=###,END", "no_progress=true"]
    parse = lambda argv: parse_command(bootstrap.WeakenConfig, argv, prog="bpo bootstrap weaken")  # noqa: E731
    by_flags, by_keys, by_yaml = parse(flags), parse(keys), parse(["--config", str(yaml_file)])
    assert by_flags == by_keys == by_yaml
    assert (by_flags.steps, by_flags.alpha, by_flags.stop, by_flags.temperature) == ("300,900", 0.5, ["###", "END"], 1.0)
    assert parse(["--config", str(yaml_file), "alpha=2", "--batch-size", "3"]).batch_size == 3  # the line wins


def test_generate_flag_key_and_yaml_agree_and_keep_their_own_defaults(tmp_path):
    yaml_file = tmp_path / "gen.yaml"
    yaml_file.write_text("model: M\ndata: in.jsonl\nout: o.jsonl\nprompt_field: text_prompt\nblind: true\n")
    by_flags = generate._parse(["--model", "M", "--data", "in.jsonl", "--out", "o.jsonl", "--prompt-field",
                                "text_prompt", "--blind"], require=True)[0]
    by_keys = generate._parse(["model=M", "data=in.jsonl", "out=o.jsonl", "prompt_field=text_prompt", "blind=true"],
                              require=True)[0]
    by_yaml = generate._parse(["--config", str(yaml_file)], require=True)[0]
    assert by_flags == by_keys == by_yaml
    # one declaration of the shared options, other defaults: greedy, 512 tokens, no model needed to merge
    assert (by_flags.temperature, by_flags.top_p, by_flags.max_new_tokens) == (0.0, 1.0, 512)
    base, own = GenerationOptions.__dataclass_fields__, generate.GenerateConfig.__dataclass_fields__
    assert own["max_new_tokens"].metadata == base["max_new_tokens"].metadata  # same help: not a second copy
    blind = parse_command(bootstrap.BlindConfig, ["--model", "M", "--data", "d", "--out", "o"], prog="t")
    assert (blind.temperature, blind.top_p, blind.max_new_tokens) == (0.0, 1.0, 64)
    assert generate._parse(["--data", "d", "--out", "o", "--merge-only"], require=True)[0].model is None


@pytest.mark.parametrize("spelling", ["--max-new-tokens 100", "max_new_tokens=100", "yaml"])
def test_preset_refuses_a_contradicting_option_in_every_spelling(spelling, tmp_path):
    base = ["--model", "M", "--data", "d", "--out", "o", "--preset", "vlguard"]
    if spelling == "yaml":
        (tmp_path / "g.yaml").write_text("max_new_tokens: 100\n")
        extra = ["--config", str(tmp_path / "g.yaml")]
    else:
        extra = shlex.split(spelling)
    with pytest.raises(BpoError, match="--preset vlguard pins --max-new-tokens 256"):
        generate.check(base + extra)
    cfg, preset = generate._parse(base, require=True)
    assert preset.name == "vlguard" and cfg.max_new_tokens == 256


@pytest.mark.parametrize("argv, message", [
    (["bootstrap", "self", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "0"],
     "error: --batch-size must be >= 1, not 0; pass e.g. --batch-size 8"),
    (["bootstrap", "blind", "--model", "m", "--data", "d", "--out", "o", "top_p=1.5"],
     "error: --top-p must be in (0, 1], not 1.5; pass e.g. --top-p 0.9 (1 = no cut)"),
    (["bootstrap", "weaken", "--model", "m", "--data", "d", "--out", "o", "--mode", "contrastive"],
     "error: bpo bootstrap weaken: config key 'mode': 'contrastive' is not one of sample, contrast"),
    (["bootstrap", "inject", "--data", "d", "--out", "o", "--backend", "hf"],
     "error: --backend hf needs --lm PATH_OR_ID (a causal language model)"),
    (["generate", "--data", "d", "--out", "o", "--dtype", "fp64"],
     "error: bpo generate: config key 'dtype': 'fp64' is not one of float32, fp32, bfloat16, bf16, float16, fp16, auto"),
    (["generate", "--data", "d", "--out", "o", "--seed", "x"],
     "error: bpo generate: config key 'seed': cannot read 'x' as int"),
    (["generate", "--data", "d", "--out", "o", "--image-root", "/nonexistent/dir", "--model", "m"],
     "error: --image-root /nonexistent/dir: no such directory; pass the folder the records' image paths are "
     "relative to"),
    (["data", "stats"], "error: bpo data stats: missing FILE"),
    (["data", "stats", "f.jsonl", "jsn=true"], "error: bpo data stats: unknown config key 'jsn'; did you mean 'json'?"),
    (["safety", "export", "--records", "r", "--out", "o", "--prompt-key", "q"],
     "error: bpo safety export: config key 'prompt_key': 'q' is not one of question, prompt"),
])
def test_bad_value_is_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_check_parses_without_files_or_running(tmp_path):
    later = str(tmp_path / "made-by-an-earlier-step")
    line = ["weaken", "--model", "m", "--data", f"{later}/in.jsonl", "--image-root", later, "--out", "o.jsonl"]
    assert bootstrap.check(line) is None and not Path(later).exists()  # nothing run, nothing written
    with pytest.raises(BpoError, match="no such directory"):  # the command itself needs the folder
        parse_command(bootstrap.WeakenConfig, line[1:], prog="bpo bootstrap weaken")
    with pytest.raises(BpoError, match="noise step must be in 0..999"):
        bootstrap.check([*line, "--steps", "1000"])
    with pytest.raises(BpoError, match="did you mean 'weaken'"):
        bootstrap.check(["waeken", *line[1:]])
    data.check(["validate", f"{later}/r.jsonl", "--image-root", later])
    with pytest.raises(BpoError, match="pass --image-root DIR"):
        data.check(["validate", "r.jsonl"])
    safety.check(["build", "--pairs", "p", "--index", "i", "--image-root", later, "--out", "o", "--llm-model", "x",
                  "--llm-rewrite"])
    with pytest.raises(BpoError, match="--llm-rewrite needs a model name"):
        safety.check(["build", "--pairs", "p", "--index", "i", "--image-root", later, "--out", "o", "--llm-rewrite"])
    with pytest.raises(BpoError, match="did you mean 'column'"):
        safety.check(["build", "--pairs", "p", "--index", "i", "--image-root", "x", "--out", "o",
                      "entity_backend=colum"])
    generate.check(["--model", "m", "--data", "d", "--out", "o", "--image-root", later])
    with pytest.raises(BpoError, match="missing --out"):
        generate.check(["--model", "m", "--data", "d"])


def test_shipped_recipes_lines_of_these_commands_parse():
    """configs/*.yaml recipes spell these commands with the old flags; each of their lines still parses."""
    from bpo.cli import COMMANDS
    from bpo.pipeline import load_recipe

    modules = {"bootstrap": bootstrap, "generate": generate, "data": data, "safety": safety}
    seen = 0
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if "\nsteps:" not in text:
            continue
        for step in load_recipe(path, commands=COMMANDS).steps:
            argv = shlex.split(step.run)
            if argv[0] in modules:
                modules[argv[0]].check(argv[1:])
                seen += 1
    assert seen >= 3

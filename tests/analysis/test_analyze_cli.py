"""`bpo analyze` options: typed configs (flags == key=value == YAML), --help-config, one-line cross-field errors,
and `check` (parse only, for `bpo pipeline`)."""

import pytest

from bpo.cli import main as cli
from bpo.commands import analyze
from bpo.config import parse_command
from bpo.errors import BpoError


def _parse(sub, argv, require=True):
    cls, _, _ = analyze.TABLE[sub]
    return parse_command(cls, argv, prog=f"bpo analyze {sub}", require=require)


def test_scaling_flags_keys_and_yaml_are_one_config(tmp_path):
    yaml_file = tmp_path / "scaling.yaml"
    yaml_file.write_text("inputs: [a.json, b.json]\nmetric: chair_i\nout: figs\nx: records\n"
                         "rename: sigmoid=BPO,sft=SFT\nlogx: true\n")
    by_flags = _parse("scaling", ["a.json", "b.json", "--metric", "chair_i", "--out", "figs", "--x", "records",
                                  "--rename", "sigmoid=BPO,sft=SFT", "--logx"])
    by_keys = _parse("scaling", ["inputs=a.json,b.json", "metric=chair_i", "out=figs", "x=records",
                                 "rename=sigmoid=BPO,sft=SFT", "logx=true"])
    by_yaml = _parse("scaling", ["--config", str(yaml_file)])
    assert by_flags == by_keys == by_yaml
    assert by_flags.inputs == ["a.json", "b.json"] and by_flags.logx is True
    assert by_flags.renames() == {"sigmoid": "BPO", "sft": "SFT"}
    # the command line beats the file
    assert _parse("scaling", ["--config", str(yaml_file), "--no-logx", "x=pairs"]).x == "pairs"


def test_noise_old_flag_spellings_still_work():
    cfg = _parse("noise", ["--model", "m", "--image", "i.png", "--prompt", "What?", "--targets", "bear, person", "--out", "o",
                           "--steps", "0:1000:500", "--no-responses", "--max-new-tokens", "8", "--batch-size", "2"])
    assert (cfg.no_responses, cfg.max_new_tokens, cfg.batch_size, cfg.device) == (True, 8, 2, "auto")
    assert cfg.target_words() == ["bear", "person"]


@pytest.mark.parametrize("sub, argv, message", [
    ("noise", ["--model", "m", "--image", "i", "--prompt", "p", "--out", "o", "--targets", " , "], "--targets needs at least one"),
    ("noise", ["--model", "m", "--image", "i", "--prompt", "p", "--out", "o", "--targets", "a", "--steps", "1200"], "1200"),
    ("noise", ["--model", "m", "--image", "i", "--prompt", "p", "--out", "o", "--targets", "a", "samples=0"], "--samples must be"),
    ("noise", ["--image", "i", "--prompt", "p", "--out", "o", "--targets", "a"], "missing --model"),
    ("curves", ["r1", "r2", "--out", "o", "--labels", "one"], "--labels has 1 label(s) for 2 input(s)"),
    ("curves", ["r1", "--out", "o", "windw=3"], "did you mean 'window'"),
    ("scaling", ["r", "--metric", "m", "--out", "o", "--rename", "sigmoid"], "use LOSS_TYPE=NAME pairs"),
    ("modality", ["--records", "r.jsonl", "--out", "o", "--text-responses", "t.jsonl"],
     "no responses for condition(s) multimodal, blind"),
    ("modality", ["--records", "r.jsonl", "--out", "o", "--model", "m", "--judge", "gpt"], "not one of"),
])
def test_bad_options_are_one_line_errors_before_anything_loads(sub, argv, message):
    with pytest.raises(BpoError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        _parse(sub, argv)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sub", list(analyze.TABLE))
def test_help_config_lists_every_key(sub, capsys):
    assert cli(["analyze", sub, "--help-config"]) == 0
    out = capsys.readouterr().out
    keys = {"curves": ["runs", "out", "window", "labels"],
            "noise": ["model", "adapter", "dtype", "device", "targets", "steps", "no_responses", "batch_size"],
            "modality": ["records", "text_responses", "model", "on_missing", "judge.kind", "judge.model",
                         "judge.no_cache"],
            "scaling": ["inputs", "metric", "out", "x", "rename", "logx"]}[sub]
    for key in keys:
        assert f"  {key} " in out, key


def test_check_parses_without_running(tmp_path):
    out = tmp_path / "never"
    analyze.check(["curves", str(tmp_path / "no-run-yet"), "--out", str(out)])
    analyze.check(["modality", "--records", "made/later.jsonl", "--out", str(out), "--model", "m"])
    assert not out.exists()
    with pytest.raises(BpoError, match="did you mean 'curves'"):
        analyze.check(["curvs", "r", "--out", str(out)])
    with pytest.raises(BpoError, match="missing --metric"):
        analyze.check(["scaling", "r", "--out", str(out)])

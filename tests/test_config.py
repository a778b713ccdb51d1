"""Config loading: YAML + overrides, typed coercion, unknown keys, and every shipped config parses."""

from pathlib import Path

import pytest
import yaml

from bpo.config import format_help, load_config, parse_overrides
from bpo.errors import BpoError
from bpo.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_nested():
    cfg = load_config(TrainConfig, None, ["optim.lr=1e-5", "lora.r=8", "run.precision=bf16",
                                          "data.sources=weakened,injected", "lora.enabled=false",
                                          "loss.source_weights={weakened: 1.0, injected: 0.5}"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.lora.r == 8 and cfg.lora.enabled is False
    assert cfg.data.sources == ["weakened", "injected"]
    assert cfg.loss.source_weights == {"weakened": 1.0, "injected": 0.5}
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    # YAML turns `off` into False; a string option whose choices include "off" gets the word back
    assert load_config(TrainConfig, None, ["run.ref_cache=off"]).run.ref_cache == "off"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 3.0e-6}\nrun: {epochs: 2}\n")
    cfg = load_config(TrainConfig, f, ["run.epochs=3"])
    assert cfg.optim.lr == 3e-6 and cfg.run.epochs == 3


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "did you mean 'optim.lr'"),
    (["lora.r=abc"], "cannot read 'abc' as int"),
    (["run.precision=fp8"], "not one of"),
    (["loss.beta=0"], "beta must be > 0"),
    (["data.subset_fraction=1.5"], "subset_fraction"),
    (["lora.train_vision=true"], "needs full fine-tuning"),
    (["nonsense"], "key=value"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(BpoError, match=message) as info:
        load_config(TrainConfig, None, override)
    assert "\n" not in str(info.value)


def test_invalid_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: [1\n")
    with pytest.raises(BpoError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(TrainConfig, f)


# Which command reads each shipped recipe: a new file in configs/recipes/ must be named here (and so tested).
RECIPE_COMMANDS = {"blind_po.yaml": "pipeline", "iterative_bpo.yaml": "iterate"}


def test_configs_folder_holds_only_train_configs_recipes_and_engines():
    assert {p.name for p in (ROOT / "configs").iterdir()} == {"train", "recipes", "accelerate"}
    assert not list((ROOT / "configs").glob("*.yaml"))


def test_every_shipped_train_config_parses():
    configs = sorted((ROOT / "configs" / "train").rglob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        cfg = load_config(TrainConfig, path)
        cfg.validate()  # model/data paths present


def test_every_shipped_recipe_parses(monkeypatch, capsys):
    """Pipeline recipes load with every step's options checked; iterate configs parse as `bpo iterate` reads
    them. A recipe's default train config is a shipped one (the paths are relative to the repository root)."""
    from bpo.cli import COMMANDS, check_command
    from bpo.commands import iterate
    from bpo.pipeline import load_recipe

    monkeypatch.chdir(ROOT)
    recipes = sorted((ROOT / "configs" / "recipes").rglob("*.yaml"))
    assert sorted(p.name for p in recipes) == sorted(RECIPE_COMMANDS)
    for path in recipes:
        if RECIPE_COMMANDS[path.name] == "pipeline":
            recipe = load_recipe(path, commands=COMMANDS, check=check_command)
            train_config = recipe.vars["train_config"]
        else:
            cfg = iterate.parse(["--config", str(path)], require=False)
            train_config = cfg.train_config
        assert (ROOT / train_config).is_file() and Path(train_config).parent == Path("configs/train"), path


def test_paper_settings_in_recipes():
    bpo = load_config(TrainConfig, ROOT / "configs/train/llava15_7b_bpo.yaml")
    assert (bpo.lora.r, bpo.optim.lr, bpo.run.epochs, bpo.loss.beta) == (64, 2e-6, 2, 0.1)
    blind = load_config(TrainConfig, ROOT / "configs/train/llava15_7b_blind_po.yaml")
    assert not blind.lora.enabled and blind.lora.train_projector
    assert (blind.optim.lr, blind.run.epochs, blind.loss.beta) == (1e-6, 1, 0.1)
    assert blind.data.sources == ["human", "blind"]


def test_accelerate_configs_are_valid_yaml():
    paths = sorted((ROOT / "configs/accelerate").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"ddp", "zero2", "zero3", "fsdp"}
    for p in paths:
        data = yaml.safe_load(p.read_text())
        assert data["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}


def test_help_lists_every_key():
    text = format_help(TrainConfig)
    for key in ("optim.lr", "lora.r", "loss.beta", "data.max_length", "run.resume"):
        assert key in text

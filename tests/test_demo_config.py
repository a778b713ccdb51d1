"""`bpo demo --quick` reads its recipe from inside the package, and says so when it is missing."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

import bpo
from bpo.commands import demo
from bpo.config import load_config
from bpo.errors import BpoError
from bpo.paths import package_file
from bpo.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_quick_recipe_ships_inside_the_package():
    recipe = package_file(*demo.QUICK_RECIPE)
    package = Path(bpo.__file__).resolve().parent
    assert recipe.is_file() and recipe.is_relative_to(package)
    rel = recipe.relative_to(package).as_posix()
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1].split("\n[")[0]
    patterns = re.findall(r'"([^"]+)"', section)  # (tomllib is 3.11+; the project supports 3.10)
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in pyproject's package-data {patterns}"


def test_quick_recipe_equals_the_checkout_recipe():
    """configs/train/tiny_cpu.yaml is the same recipe for a source checkout: the two may not drift apart."""
    shipped = load_config(TrainConfig, package_file(*demo.QUICK_RECIPE))
    assert shipped == load_config(TrainConfig, ROOT / "configs" / "train" / "tiny_cpu.yaml")
    assert shipped != TrainConfig()  # a real recipe, not the defaults


def test_missing_recipe_is_an_error_not_the_defaults(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a model "already built": nothing heavy runs
    monkeypatch.setattr(demo, "QUICK_RECIPE", ("train", "no_such_recipe.yaml"))
    with pytest.raises(BpoError, match="no_such_recipe.yaml: config file not found"):
        demo.run_quick(tmp_path, 1)

"""The family recipes parse and run two steps on their tiny hub-shaped fixture (settings as shipped, sizes tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpo.cli import main as cli
from bpo.config import load_config
from bpo.train.config import TrainConfig
from tests.conftest import PREF_ROWS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"llava_next": "configs/train/llava_next_7b_bpo.yaml", "qwen25vl": "configs/train/qwen25vl_7b_bpo.yaml"}


@pytest.mark.parametrize("family", sorted(RECIPES))
def test_recipe_parses_with_the_family_budget(family):
    cfg = load_config(TrainConfig, ROOT / RECIPES[family])
    cfg.validate()
    # LLaVA-NeXT's largest anyres image is 2928 tokens: a 2048 budget would drop every record.
    assert cfg.data.max_length >= (2928 + 512 if family == "llava_next" else 529 + 512)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(RECIPES))
def test_recipe_runs_two_steps_on_the_tiny_fixture(family, tiny_family, image_root, tmp_path):
    data = tmp_path / "prefs.jsonl"
    rows = [{**r, "rejected": [{**n, "source": "weakened"} for n in r["rejected"]]} for r in PREF_ROWS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    # Only what a CPU box forces changes: the model, the data, fp32, and two steps.
    assert cli(["train", "--config", str(ROOT / RECIPES[family]), f"model.name={tiny_family(family)}",
                f"data.train={data}", f"data.image_root={image_root}", f"run.output_dir={out}", "run.max_steps=2",
                "model.dtype=float32", "run.precision=fp32", "run.progress=false", "run.tensorboard=false"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert (out / "adapter" / "adapter_config.json").exists()

"""The Blind-PO recipe with full fine-tuning on the Qwen2.5-VL and Gemma 3 families: the generate step loads the
fully fine-tuned output folder (its processor saved under the stock class name)."""

import json
from pathlib import Path

import pytest

from bpo.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen25vl", "gemma3"])
def test_blind_po_recipe_full_finetuning_generates_from_the_trained_model(family, tiny_family, tmp_path, capsys):
    model = tiny_family(family)
    sample = tmp_path / "sample"
    assert cli(["safety", "sample", "--out", str(sample)]) == 0
    out = tmp_path / "run"
    args = [
        "pipeline", str(ROOT / "configs/recipes/blind_po.yaml"),
        f"model={model}", f"pairs={sample / 'pairs.jsonl'}", f"index={sample / 'index.csv'}",
        f"image_root={sample / 'images'}", f"out={out}", f"train_config={ROOT / 'configs/train/tiny_cpu.yaml'}",
        "train_args=run.max_steps=1 lora.enabled=false data.max_length=1024 run.progress=false run.tensorboard=false",
        f"trained=--model {out}/train/model", "max_new_tokens=4", "batch_size=4",
    ]
    assert cli(args) == 0, capsys.readouterr().err
    saved = json.loads((out / "train" / "model" / "processor_config.json").read_text())["processor_class"]
    assert saved == json.loads((Path(model) / "processor_config.json").read_text())["processor_class"]
    assert json.loads((out / "safety.json").read_text())["metrics"]

"""The shipped Blind-PO recipe end to end on tiny models: build -> blind -> train -> generate -> eval safety.

LoRA on LLaVA; full fine-tuning on Qwen2.5-VL and Gemma 3, where the generate step loads the fully fine-tuned
output folder (its processor saved under the stock class name)."""

import json
from pathlib import Path

import pytest

from bpo.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def recipe_args(model, tmp_path, *, train_args: str, trained: str, max_new_tokens: int) -> tuple[list[str], Path]:
    """``bpo pipeline configs/recipes/blind_po.yaml`` on the bundled safety sample; (argv, the run folder)."""
    sample = tmp_path / "sample"
    assert cli(["safety", "sample", "--out", str(sample)]) == 0
    out = tmp_path / "run"
    args = [
        "pipeline", str(ROOT / "configs/recipes/blind_po.yaml"),
        f"model={model}", f"pairs={sample / 'pairs.jsonl'}", f"index={sample / 'index.csv'}",
        f"image_root={sample / 'images'}", f"out={out}", f"train_config={ROOT / 'configs/train/tiny_cpu.yaml'}",
        f"train_args={train_args} run.progress=false run.tensorboard=false",
        f"trained={trained.format(out=out)}", f"max_new_tokens={max_new_tokens}", "batch_size=4",
    ]
    return args, out


def test_blind_po_recipe_produces_a_safety_report(tiny_llava, tmp_path, capsys):
    args, out = recipe_args(tiny_llava, tmp_path, train_args="run.max_steps=2",
                            trained=f"--model {tiny_llava} --adapter {{out}}/train/adapter", max_new_tokens=6)
    assert cli(args) == 0, capsys.readouterr().err
    prefs = [json.loads(line) for line in (out / "prefs.jsonl").read_text().splitlines()]
    assert prefs and all({n["source"] for n in p["rejected"]} == {"human", "blind"} for p in prefs)
    train_rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/margins/blind" in train_rows[0] and "rewards/margins/human" in train_rows[0]
    report = json.loads((out / "safety.json").read_text())
    n = report["metrics"]["n"] if "n" in report["metrics"] else len(prefs)
    assert n == len(prefs)
    assert 0.0 <= report["metrics"]["safety_rate"] <= 1.0
    # a second run skips every step (resumable recipe)
    assert cli(args) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 5


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen25vl", "gemma3"])
def test_blind_po_recipe_full_finetuning_generates_from_the_trained_model(family, tiny_family, tmp_path, capsys):
    model = tiny_family(family)
    args, out = recipe_args(model, tmp_path, train_args="run.max_steps=1 lora.enabled=false data.max_length=1024",
                            trained="--model {out}/train/model", max_new_tokens=4)
    assert cli(args) == 0, capsys.readouterr().err
    saved = json.loads((out / "train" / "model" / "processor_config.json").read_text())["processor_class"]
    assert saved == json.loads((Path(model) / "processor_config.json").read_text())["processor_class"]
    assert json.loads((out / "safety.json").read_text())["metrics"]

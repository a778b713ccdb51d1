"""The shipped Blind-PO recipe end to end on a tiny model: build -> blind -> train -> generate -> eval safety."""

import json
from pathlib import Path

from bpo.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def test_blind_po_recipe_produces_a_safety_report(tiny_llava, tmp_path, capsys):
    sample = tmp_path / "sample"
    assert cli(["safety", "sample", "--out", str(sample)]) == 0
    out = tmp_path / "run"
    args = [
        "pipeline", str(ROOT / "configs/recipes/blind_po.yaml"),
        f"model={tiny_llava}", f"pairs={sample / 'pairs.jsonl'}", f"index={sample / 'index.csv'}",
        f"image_root={sample / 'images'}", f"out={out}", f"train_config={ROOT / 'configs/train/tiny_cpu.yaml'}",
        "train_args=run.max_steps=2 run.progress=false run.tensorboard=false",
        f"trained=--model {tiny_llava} --adapter {out}/train/adapter",
        "max_new_tokens=6", "batch_size=4",
    ]
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

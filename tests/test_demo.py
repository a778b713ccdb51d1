"""`bpo demo`: the quick DPO smoke run and a fast toy-world pipeline (artifacts and sane ranges, not science)."""

import json
import math

import pytest

from bpo.cli import main as cli


def test_quick_demo(tmp_path, capsys):
    assert cli(["demo", "--quick", "--out", str(tmp_path / "q"), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "adapter:" in out and (tmp_path / "q" / "run" / "adapter" / "adapter_config.json").exists()


def test_fast_toy_pipeline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    table = summary["table"]
    assert set(table) == {"base", "bpo_weakened", "dpo_self", "sft", "paper_weakened", "paper_self"}
    for name, row in table.items():
        for metric in ("CHAIR_i", "recall", "POPE acc", "POPE rand acc", "POPE adv yes", "pull", "parse"):
            mean, _ = row[metric]
            assert math.isnan(mean) or 0.0 <= mean <= 1.0, (name, metric, mean)
    claims = summary["claims"]
    assert [(c["claim"][:3], c["recipe"]) for c in claims] == [("(a)", None)] + [
        (k, r) for r in ("reg", "paper") for k in ("(b)", "(c)", "(d)", "(e)")]
    for c in claims:
        assert c["verdict"] in ("holds", "fails", "unresolved")
        for part in c["parts"]:
            lo, hi = part["ci"]
            assert lo <= hi and len(part["per_seed"]) == 1
    # the paper recipe trains without the NLL term, the reg recipe with it
    import yaml

    paper_cfg = yaml.safe_load((out / "seed-0" / "runs" / "paper_weakened" / "config.yaml").read_text())
    reg_cfg = yaml.safe_load((out / "seed-0" / "runs" / "bpo_weakened" / "config.yaml").read_text())
    assert paper_cfg["loss"]["sft_weight"] == 0.0 and reg_cfg["loss"]["sft_weight"] == 1.0
    assert summary["machine"]["torch_threads"] >= 1 and summary["command"].startswith("bpo demo --fast")
    eval_counts = summary["seeds"][0]["results"]["base"]["counts"]
    assert len(eval_counts) == 16 and all(len(r) == 4 for r in eval_counts)
    report = (out / "report.md").read_text()
    assert "| bpo_weakened |" in report and "The paper's claims, measured" in report
    seed = out / "seed-0"
    for f in ("weak.jsonl", "weak_inj.jsonl", "self.jsonl", "data/vocab.json", "eval/base/chair.json",
              "eval/sft/pope.json", "runs/bpo_weakened/adapter/adapter_config.json", "plots/curves/logps.png",
              "plots/noise"):
        assert (seed / f).exists(), f
    negs = [json.loads(line) for line in (seed / "weak_inj.jsonl").read_text().splitlines()]
    assert {n["source"] for r in negs for n in r["rejected"]} == {"weakened", "injected"}
    assert "report:" in printed


def test_fast_sweep_on_tuning_seeds_and_held_out_images(tmp_path, capsys):
    """`bpo demo --sweep --fast`: every grid point trains on a tuning seed, is scored on held-out scenes, and the
    fixed criterion picks one setting per recipe (or none) from a table that lists them all."""
    from bpo.toy.sweep import FAST_GRID, grid_points

    out = tmp_path / "sweep"
    assert cli(["demo", "--sweep", "--fast", "--seeds", "1", "--out", str(out)]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["seeds"] == [100]
    names = [name for _, name, _ in grid_points(FAST_GRID)]
    for recipe in FAST_GRID:
        rows = sweep["choice"][recipe]["grid"]
        assert len(rows) == sum(n.startswith(recipe) for n in names)
        chosen = sweep["choice"][recipe]["chosen"]
        assert chosen is None or any(all(r[k] == chosen[k] for k in ("lr", "steps", "beta")) and r["recall_ok"]
                                     for r in rows)
    runs = out / "seed-100" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(names)
    import yaml

    cfg = yaml.safe_load((runs / "reg_lr0.002_s4_b0.5" / "config.yaml").read_text())
    assert (cfg["optim"]["lr"], cfg["run"]["max_steps"], cfg["loss"]["beta"]) == (2e-3, 4, 0.5)
    records = (out / "seed-100" / "data" / "chair.jsonl").read_text()
    assert '"heldout-' in records and '"eval-' not in records  # tuning never sees the reported eval images
    assert "| reg | 0.002 | 4 | 0.5 |" in (out / "sweep.md").read_text()


def test_fast_safety_scenario(tmp_path, capsys):
    """`bpo demo --scenario safety --fast`: every public stage runs and the report holds the measured rates."""
    out = tmp_path / "safety"
    assert cli(["demo", "--scenario", "safety", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["table"]) == {"base", "dpo", "blind_po"}
    for name, row in summary["table"].items():
        for label, (mean, _) in row.items():
            # the cheating probe is undefined (n/a) for a model that refused nothing
            assert (math.isnan(mean) and label.startswith("cheating")) or 0.0 <= mean <= 1.0, (name, label, mean)
    assert [c["claim"].split(":")[0] for c in summary["claims"]] == ["premise", "target", "target"]
    seed = summary["seeds"][0]
    assert seed["build"]["rows_read"] == seed["build"]["written"] + sum(seed["build"]["filtered"].values())
    assert seed["blind_negatives"]["n"] == seed["build"]["written"]
    root = out / "seed-0"
    prefs = [json.loads(line) for line in (root / "prefs.jsonl").read_text().splitlines()]
    assert all({n["source"] for n in r["rejected"]} == {"human", "blind"} for r in prefs)
    for f in ("data/pairs.jsonl", "data/index.csv", "mmsafe.jsonl", "build_report.json",
              "runs/dpo/adapter/adapter_config.json", "runs/blind_po/adapter/adapter_config.json",
              "eval/base/mm_hazard_safety.json", "eval/blind_po/blind_hazard_safety.json",
              "eval/dpo/text_benign_responses.jsonl", "eval/blind_po/modality/modality.png",
              "eval/base/modality/modality.json", "plots/curves/logps.png"):
        assert (root / f).exists(), f
    # DPO trains on the human negative only, Blind PO on both (the per-source metrics show it)
    dpo = json.loads((root / "runs/dpo/metrics.jsonl").read_text().splitlines()[0])
    blind = json.loads((root / "runs/blind_po/metrics.jsonl").read_text().splitlines()[0])
    assert "logps/rejected/blind" in blind and "logps/rejected/blind" not in dpo
    assert "| blind_po |" in (out / "report.md").read_text() and "report:" in printed
    assert (out / "safety.png").stat().st_size > 1000


def test_quick_has_no_scenarios(tmp_path, capsys):
    assert cli(["demo", "--quick", "--scenario", "safety", "--out", str(tmp_path)]) == 2
    assert "drop --quick to run --scenario safety" in capsys.readouterr().err


@pytest.mark.slow
def test_fast_iterative_scenario(tmp_path, capsys):
    """`bpo demo --scenario iterative --fast`: two rounds through `bpo iterate`, the report and its verdict."""
    out = tmp_path / "iter"
    assert cli(["demo", "--scenario", "iterative", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    it = out / "seed-0" / "iterate"
    rounds = json.loads((it / "rounds.json").read_text())
    rows = rounds["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0.0 <= r["chair_s"] <= 1.0 and 0.0 <= r["pull"] <= 1.0, r
    assert rows[1]["negatives"]["weakened"]["n"] > 0 and "train" in rows[2]
    assert [v["claim"] for v in rounds["verdicts"]][0] == "round 2 beats round 1 on held-out CHAIR_i"
    cfg2 = (it / "round-2" / "train" / "config.yaml").read_text()
    assert "init_from: " + str(it / "round-1" / "train" / "adapter") in cfg2 and "reference: start" in cfg2
    assert (it / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "round 2 beats round 1 on held-out CHAIR_i" in report and "paired-bootstrap interval" in report
    assert "round 2 beats round 1" in printed


def test_demo_help_config_and_one_line_option_errors(capsys):
    from bpo.commands import demo

    assert cli(["demo", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("out", "quick", "steps", "seeds", "fast", "study", "eval_images", "threads", "jobs", "sweep",
                "write_docs", "scenario"):
        assert f"  {key} " in out, key
    cfg = demo.parse(["--fast", "--seeds", "2", "scenario=safety", "--no-write-docs"])
    assert (cfg.fast, cfg.seeds, cfg.scenario, cfg.write_docs, cfg.out) == (True, 2, "safety", False, "outputs/demo")
    for argv, message in ((["--seeds", "0"], "--seeds must be >= 1"), (["--scenario", "ocr"], "not one of"),
                          (["--quick", "scenario=iterative"], "drop --quick"), (["--jobs", "0"], "--jobs must be >= 1")):
        assert cli(["demo", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    demo.check(["--study", "--eval-images", "300"])

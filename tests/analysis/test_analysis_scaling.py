"""bpo analyze scaling: counting a run's preference pairs, pairing runs with reports, the plot."""

from __future__ import annotations

import json

import pytest
import yaml

from bpo.analysis.plotting import read_csv
from bpo.analysis.scaling import analyze_scaling, count_training_data, dropped_ids, points
from bpo.cli import main as cli_main
from bpo.errors import BpoError

# Negative sources per record: 1 + 2 + 1 + 3 + 1 + 1 = 9 pairs in 6 records.
SOURCES = {"r1": ["weakened"], "r2": ["weakened", "injected"], "r3": ["injected"],
           "r4": ["weakened", "injected", "weakened"], "r5": ["weakened"], "r6": ["injected"]}


def _record(rid, sources):
    return {"id": rid, "images": [], "prompt": [{"role": "user", "content": f"q {rid}"}], "chosen": "yes",
            "rejected": [{"text": f"no {k}", "source": s} for k, s in enumerate(sources)]}


@pytest.fixture
def world(tmp_path):
    """A folder laid out as `bpo train` runs leave it: data/prefs.jsonl, runs/<name>/config.yaml, reports/."""
    (tmp_path / "data").mkdir()
    lines = [json.dumps(_record(r, s)) for r, s in SOURCES.items()]
    (tmp_path / "data" / "prefs.jsonl").write_text("\n".join(lines) + "\n{broken\n")
    (tmp_path / "reports").mkdir()
    return tmp_path


def make_run(root, name, *, loss="sigmoid", fraction=1.0, sources=(), max_negatives=0, dropped=(),
             chair_i=None, train="data/prefs.jsonl"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    cfg = {"model": {"name": "m"}, "data": {"train": train, "subset_fraction": fraction, "subset_seed": 0,
                                            "sources": list(sources), "max_negatives": max_negatives},
           "loss": {"type": loss}, "run": {"output_dir": f"runs/{name}"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (run / "dropped.txt").write_text("".join(f"data/prefs.jsonl:{i}: record {rid!r}: too long: 900 prompt tokens\n"
                                             for i, rid in dropped))
    if chair_i is not None:
        report = {"task": "chair", "metrics": {"chair_i": chair_i, "chair_s": 2 * chair_i, "n": 300},
                  "adapter": str(run / "adapter"), "model": "base"}
        (root / "reports" / f"{name}.json").write_text(json.dumps(report))
    return run


def test_count_by_hand(world):
    """Full data, r4 dropped at encoding: 6 - 1 = 5 records, 9 - 3 = 6 pairs (the broken line never counts)."""
    run = make_run(world, "full", dropped=[(4, "r4")])
    info = count_training_data(run)
    assert (info["records"], info["pairs"], info["dropped"]) == (5, 6, 1)
    assert info["data"] == str(world / "data" / "prefs.jsonl") and info["loss_type"] == "sigmoid"


def test_count_applies_sources_and_max_negatives(world):
    """sources=[weakened], max 1 per record: r1, r2, r4, r5 keep one weakened negative each; r3 and r6 have
    none left and are dropped -> 4 records, 4 pairs."""
    info = count_training_data(make_run(world, "weak", sources=["weakened"], max_negatives=1))
    assert (info["records"], info["pairs"]) == (4, 4)


def test_count_applies_the_subset_draw(world):
    """fraction 0.5 of 6 records = 3 (round), drawn like bpo.train.data.subset with the run's seed."""
    from bpo.data.records import read_records
    from bpo.train.data import subset

    info = count_training_data(make_run(world, "half", fraction=0.5))
    chosen = subset(list(read_records(world / "data" / "prefs.jsonl", on_error="skip", errors=[])), 0.5, 0)
    assert info["records"] == 3 and info["pairs"] == sum(len(SOURCES[r.id]) for r in chosen)
    assert info["pairs"] < 9


def test_dropped_ids_parse_quoted_ids(tmp_path):
    (tmp_path / "dropped.txt").write_text("f:1: record 'a': too long\nf:2: record \"it's\": broken image\n"
                                          "f:3: malformed JSON\n")
    assert dropped_ids(tmp_path) == {"a", "it's"}


def test_changed_data_file_is_refused(world):
    run = make_run(world, "ck")
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "state.json").write_text(json.dumps({"fingerprint": {"data_sha256": "0" * 64}}))
    with pytest.raises(BpoError, match="has changed since the run trained"):
        count_training_data(run)


def test_missing_data_file_names_the_fix(world):
    run = make_run(world, "lost", train="data/gone.jsonl")
    with pytest.raises(BpoError, match="not found .*manifest's `pairs` column"):
        count_training_data(run)


def _four_runs(world):
    make_run(world, "bpo_full", chair_i=0.15, dropped=[(4, "r4")])
    make_run(world, "bpo_half", chair_i=0.20, fraction=0.5)
    make_run(world, "sft_full", loss="sft", chair_i=0.22)
    make_run(world, "sft_half", loss="sft", chair_i=0.25, fraction=0.5)
    rows = ["method,run_dir,report"] + [f"{m.upper()},runs/{m}_{s},reports/{m}_{s}.json"
                                        for m in ("bpo", "sft") for s in ("full", "half")]
    (world / "manifest.csv").write_text("\n".join(rows) + "\n")
    return world / "manifest.csv"


def test_cli_scaling_from_csv_manifest(world, tmp_path, capsys):
    manifest = _four_runs(world)
    half = count_training_data(world / "runs" / "bpo_half")["pairs"]
    out = tmp_path / "out"
    assert cli_main(["analyze", "scaling", str(manifest), "--metric", "chair_i", "--out", str(out)]) == 0
    rows = read_csv(out / "scaling.csv")
    assert [(r["method"], int(r["x"]), float(r["value"])) for r in rows] == [
        ("BPO", 6, 0.15), ("BPO", half, 0.20), ("SFT", 9, 0.22), ("SFT", half, 0.25)]
    pts = read_csv(out / "scaling_points.csv")
    assert [(p["method"], int(p["x"])) for p in pts] == [("BPO", half), ("BPO", 6), ("SFT", half), ("SFT", 9)]
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "chair_i" in capsys.readouterr().out


def test_plot_has_one_line_per_method(world, tmp_path):
    manifest = _four_runs(world)
    res = analyze_scaling([str(manifest)], tmp_path / "o", metric="chair_i")
    ax = res["figure"].axes[0]
    assert ax.get_legend_handles_labels()[1] == ["BPO", "SFT"]
    assert ax.get_xlabel() == "preference pairs in the training data"
    assert ax.get_ylabel() == "chair_i (lower is better)"
    data_lines = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert len(data_lines) == 2 and list(data_lines[1].get_ydata()) == [0.25, 0.22]


def test_points_average_repeats():
    """Two seeds at x=10 (0.2, 0.4): mean 0.3, population std 0.1."""
    pts = points([{"method": "A", "x": 10, "value": 0.2}, {"method": "A", "x": 10, "value": 0.4},
                  {"method": "A", "x": 5, "value": 0.5}])
    assert pts == [{"method": "A", "x": 5, "n": 1, "mean": 0.5, "std": 0.0},
                   {"method": "A", "x": 10, "n": 2, "mean": pytest.approx(0.3), "std": pytest.approx(0.1)}]


def test_yaml_manifest_with_explicit_pairs_and_records_axis(world, tmp_path):
    make_run(world, "bpo_full", chair_i=0.15)
    (world / "m.yaml").write_text(yaml.safe_dump({"runs": [
        {"method": "BPO", "run_dir": "runs/bpo_full", "report": "reports/bpo_full.json", "label": "full"},
        {"method": "SFT", "report": "reports/bpo_full.json", "pairs": 1000}]}))
    res = analyze_scaling([str(world / "m.yaml")], tmp_path / "o", metric="chair_i")
    assert [(r["x"], r["count_source"], r["label"]) for r in res["rows"]] == [(9, "run (pairs)", "full"),
                                                                             (1000, "manifest", "bpo_full")]
    with pytest.raises(BpoError, match="--x records needs the run's run_dir"):
        analyze_scaling([str(world / "m.yaml")], tmp_path / "o", metric="chair_i", x="records")


def test_reports_and_run_folders_as_inputs(world, tmp_path):
    make_run(world, "bpo_full", chair_i=0.15)
    sft = make_run(world, "sft_full", loss="sft")
    (sft / "eval").mkdir()
    (sft / "eval" / "chair.json").write_text(json.dumps({"task": "chair", "metrics": {"chair_i": 0.3}}))
    (sft / "eval" / "pope.json").write_text(json.dumps({"task": "pope", "metrics": {"f1": 0.8}}))
    res = analyze_scaling([str(world / "reports" / "bpo_full.json"), str(sft)], tmp_path / "o", metric="chair_i",
                          rename={"sigmoid": "BPO"})
    assert [(r["method"], r["x"], r["value"]) for r in res["rows"]] == [("BPO", 9, 0.15), ("sft", 9, 0.3)]


def test_scaling_errors(world, tmp_path, capsys):
    _four_runs(world)
    report = str(world / "reports" / "bpo_full.json")
    assert cli_main(["analyze", "scaling", report, "--metric", "f1", "--out", str(tmp_path)]) == 2
    assert "no metric 'f1'" in capsys.readouterr().err
    (world / "reports" / "orphan.json").write_text(json.dumps({"task": "chair", "metrics": {"chair_i": 0.1}}))
    assert cli_main(["analyze", "scaling", str(world / "reports" / "orphan.json"), "--metric", "chair_i",
                     "--out", str(tmp_path)]) == 2
    assert "cannot tell which training run" in capsys.readouterr().err
    assert cli_main(["analyze", "scaling", report, "--metric", "chair_i", "--rename", "oops",
                     "--out", str(tmp_path)]) == 2
    assert "LOSS_TYPE=NAME" in capsys.readouterr().err
    (world / "bad.csv").write_text("method,run,report\nBPO,runs/bpo_full,reports/bpo_full.json\n")
    assert cli_main(["analyze", "scaling", str(world / "bad.csv"), "--metric", "chair_i", "--out", str(tmp_path)]) == 2
    assert "bad.csv:2: unknown column(s) run" in capsys.readouterr().err


def test_sft_data_without_negatives_needs_records_axis(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prefs.jsonl").write_text(json.dumps(_record("s1", [])) + "\n")
    (tmp_path / "reports").mkdir()
    make_run(tmp_path, "sft_only", loss="sft", chair_i=0.3)
    report = str(tmp_path / "reports" / "sft_only.json")
    with pytest.raises(BpoError, match="0 pairs.*--x records"):
        analyze_scaling([report], tmp_path / "o", metric="chair_i")
    res = analyze_scaling([report], tmp_path / "o", metric="chair_i", x="records")
    assert res["rows"][0]["x"] == 1

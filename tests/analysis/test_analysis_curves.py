"""bpo analyze curves: windowed mean/std of hand-written metrics.jsonl files, plots and summary."""

from __future__ import annotations

import json
import math

import pytest

from bpo.analysis.curves import analyze_curves, load_run, plot_group, window_stats, windowed
from bpo.analysis.plotting import read_csv
from bpo.cli import main as cli_main

# A BPO run with two negative sources; "injected" appears only at steps 1 and 4 (its batches elsewhere
# had no injected negative), weakened is missing at step 4.
BPO_ROWS = [
    {"step": 1, "loss": 0.70, "logps/chosen": -10.0, "logps/rejected": -12.0, "logps/rejected/weakened": -11.0,
     "logps/rejected/injected": -13.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
     "rewards/accuracies": 0.5, "rewards/margins/weakened": 0.0, "lr": 1e-5},
    {"step": 2, "loss": 0.60, "logps/chosen": -10.2, "logps/rejected": -13.0, "logps/rejected/weakened": -12.0,
     "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2, "rewards/accuracies": 1.0},
    {"step": 3, "loss": 0.50, "logps/chosen": -10.0, "logps/rejected": -15.0, "logps/rejected/weakened": -14.0,
     "rewards/chosen": 0.0, "rewards/rejected": -0.3, "rewards/margins": 0.3, "rewards/accuracies": 1.0},
    {"step": 4, "loss": 0.40, "logps/chosen": -9.8, "logps/rejected": -17.0, "logps/rejected/injected": -16.0,
     "rewards/chosen": 0.2, "rewards/rejected": -0.5, "rewards/margins": 0.7, "rewards/accuracies": 1.0},
    {"step": 5, "loss": 0.30, "logps/chosen": -10.1, "logps/rejected": -20.0, "logps/rejected/weakened": -18.0,
     "rewards/chosen": 0.0, "rewards/rejected": -0.8, "rewards/margins": 0.8, "rewards/accuracies": 1.0},
]
# An SFT run logs only the chosen side; a non-finite loss was written as null at step 3.
SFT_ROWS = [
    {"step": 1, "loss": 1.0, "logps/chosen": -10.0, "nll/chosen": 1.0},
    {"step": 2, "loss": 0.8, "logps/chosen": -8.0, "nll/chosen": 0.8},
    {"step": 3, "loss": None, "logps/chosen": -6.0, "nll/chosen": 0.6},
    {"step": 4, "loss": 0.5, "logps/chosen": -5.0, "nll/chosen": 0.5},
]


def _run(root, name, rows, loss_type):
    d = root / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.yaml").write_text(f"loss:\n  type: {loss_type}\n")
    return str(d)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve_runs")
    return _run(root, "bpo_run", BPO_ROWS, "sigmoid"), _run(root, "sft_run", SFT_ROWS, "sft")


@pytest.fixture(scope="module")
def rendered(runs, tmp_path_factory):
    """One analysis of both runs (rendering the PNGs is the slow part), shared by the tests below."""
    out = tmp_path_factory.mktemp("curves_out")
    return out, analyze_curves(list(runs), out, window=2, labels=["BPO", "SFT"])


def test_window_stats_by_hand():
    """Window 2 over steps 1..5 of logps/rejected (-12, -13, -15, -17, -20):
    steps 1-2: mean -12.5, population std sqrt((0.5^2 + 0.5^2)/2) = 0.5;
    steps 3-4: mean -16.0, std 1.0; step 5 alone (partial window): mean -20, std 0.
    """
    stats = window_stats([(1, -12.0), (2, -13.0), (3, -15.0), (4, -17.0), (5, -20.0)], 2)
    assert [(s.window, s.step_first, s.step_last, s.n) for s in stats] == [(0, 1, 2, 2), (1, 3, 4, 2), (2, 5, 5, 1)]
    assert [s.mean for s in stats] == pytest.approx([-12.5, -16.0, -20.0])
    assert [s.std for s in stats] == pytest.approx([0.5, 1.0, 0.0])
    assert [s.step for s in stats] == [1.5, 3.5, 5.0]


def test_window_stats_skips_gaps_and_bins_by_step_number():
    """Logged every 3 steps (3, 6, 9, 12) with window 5: steps 1-5 hold 3, 6-10 hold 6 and 9, 11-15 hold 12.
    Means: 1.0; (2+4)/2 = 3.0 with std 1.0; 8.0. An empty window (none here) would be left out.
    """
    stats = window_stats([(3, 1.0), (6, 2.0), (9, 4.0), (12, 8.0)], 5)
    assert [(s.window, s.n, s.mean, s.std) for s in stats] == [(0, 1, 1.0, 0.0), (1, 2, 3.0, 1.0), (2, 1, 8.0, 0.0)]
    assert stats[1].step == 7.5  # midpoint of the steps that contributed (6 and 9)


def test_csv_holds_hand_computed_window_values(rendered):
    out, res = rendered
    rows = read_csv(out / "curves.csv")

    def get(run, metric):
        return [(int(r["window"]), int(r["n"]), float(r["mean"]), float(r["std"])) for r in rows
                if r["run"] == run and r["metric"] == metric]

    # chosen: (-10.0, -10.2) -> -10.1 +- 0.1; (-10.0, -9.8) -> -9.9 +- 0.1; -10.1 alone.
    for got, want in zip(get("BPO", "logps/chosen"), [(0, 2, -10.1, 0.1), (1, 2, -9.9, 0.1), (2, 1, -10.1, 0.0)]):
        assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:])
    # weakened is missing at step 4: window 1 holds only step 3 (-14); (-11, -12) -> -11.5 +- 0.5.
    assert get("BPO", "logps/rejected/weakened") == [(0, 2, -11.5, 0.5), (1, 1, -14.0, 0.0), (2, 1, -18.0, 0.0)]
    assert get("BPO", "logps/rejected/injected") == [(0, 1, -13.0, 0.0), (1, 1, -16.0, 0.0)]
    # SFT: (-10, -8) -> -9 +- 1; (-6, -5) -> -5.5 +- 0.5; its null loss at step 3 is skipped.
    assert get("SFT", "logps/chosen") == [(0, 2, -9.0, 1.0), (1, 2, -5.5, 0.5)]
    assert get("SFT", "loss") == [(0, 2, 0.9, pytest.approx(0.1)), (1, 1, 0.5, 0.0)]
    assert not get("SFT", "logps/rejected")
    # The per-group CSV holds exactly the metrics of its figure.
    lp = read_csv(out / "logps.csv")
    assert {r["metric"] for r in lp} == {"logps/chosen", "logps/rejected", "logps/rejected/weakened",
                                         "logps/rejected/injected"}
    assert res["summary"]


def test_summary_change_first_to_last_window(rendered):
    """BPO rejected: last window -20 - first window -12.5 = -7.5; chosen -10.1 - (-10.1) = 0.
    SFT chosen: -5.5 - (-9) = +3.5 (rises, unlike BPO)."""
    out, res = rendered
    change = {(r["run"], r["metric"]): r["change"] for r in res["summary"]}
    assert change[("BPO", "logps/rejected")] == pytest.approx(-7.5)
    assert change[("BPO", "logps/chosen")] == pytest.approx(0.0, abs=1e-12)
    assert change[("BPO", "logps/rejected/weakened")] == pytest.approx(-18.0 + 11.5)
    assert change[("SFT", "logps/chosen")] == pytest.approx(3.5)
    assert ("SFT", "logps/rejected") not in change
    saved = json.loads((out / "summary.json").read_text())
    assert saved["runs"]["SFT"]["loss_type"] == "sft" and saved["window"] == 2


def test_plots_have_labels_lines_and_bands(rendered):
    out, res = rendered
    assert set(res["figures"]) == {"logps", "rewards", "margins", "accuracies", "loss"}
    fig = res["figures"]["logps"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["all negatives", "negatives: injected", "negatives: weakened"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "optimizer step"
    assert ax.get_ylabel() == "summed log-prob of the response"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["BPO: logps/chosen", "BPO: logps/rejected", "SFT: logps/chosen"]
    # Line y = window means: BPO chosen -10.1, -9.9, -10.1 at steps 1.5, 3.5, 5.
    x, y = ax.get_lines()[0].get_data()
    assert list(x) == [1.5, 3.5, 5.0] and list(y) == pytest.approx([-10.1, -9.9, -10.1])
    assert len(ax.collections) == 3  # one std band per line
    # The per-source panel overlays the weakened negatives only.
    assert [ln.get_label() for ln in fig.axes[2].get_lines()] == ["BPO: logps/chosen", "BPO: logps/rejected/weakened",
                                                                  "SFT: logps/chosen"]
    for name in ("logps", "rewards", "margins", "accuracies", "loss"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert (out / f"{name}.csv").stat().st_size > 0
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_plot_group_without_data_returns_none(runs):
    from bpo.analysis.curves import panel_groups

    sft = load_run(runs[1], "SFT")
    series = windowed([sft], 2)
    margins = next(g for g in panel_groups([]) if g.name == "margins")
    assert plot_group(margins, series, ["SFT"], 2) is None


def test_cli_curves_prints_summary(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["analyze", "curves", *runs, "--out", str(out), "--window", "2", "--labels", "BPO,SFT"]) == 0
    text = capsys.readouterr().out
    assert "-7.5000" in text and "+3.5000" in text and "BPO (sigmoid)" in text and "SFT (sft)" in text
    assert (out / "curves.csv").is_file() and (out / "logps.png").is_file()


def test_cli_curves_errors_are_one_line(runs, tmp_path, capsys):
    assert cli_main(["analyze", "curves", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no metrics.jsonl" in err and err.count("\n") == 1
    assert cli_main(["analyze", "curves", *runs, "--out", str(tmp_path / "o"), "--labels", "only_one"]) == 2
    assert "--labels has 1 label(s) for 2 input(s)" in capsys.readouterr().err
    assert cli_main(["analyze", "curves", runs[0], "--out", str(tmp_path / "o"), "--window", "0"]) == 2
    assert "--window must be >= 1" in capsys.readouterr().err


def test_default_labels_and_metrics_file_input(runs):
    from bpo.analysis.curves import summarize
    from bpo.analysis.plotting import unique_labels

    assert unique_labels(["a/x/run", "b/y/run"]) == ["x/run", "y/run"]
    run = load_run(runs[0] + "/metrics.jsonl", "r")
    assert run.loss_type == "sigmoid" and len(run.rows) == 5
    stats = {r["metric"]: r for r in summarize([run], windowed([run], 10))}
    # One window of 10 holds all five steps: the change is 0 by construction; its mean is
    # (-12 - 13 - 15 - 17 - 20) / 5 = -15.4.
    assert math.isclose(stats["logps/rejected"]["change"], 0.0, abs_tol=1e-12)
    assert stats["logps/rejected"]["first"] == pytest.approx(-15.4)

"""Verdict arithmetic by hand: the rule, the paired bootstrap, the claims on synthetic counts, the docs block."""

from __future__ import annotations

import numpy as np
import pytest

from bpo.errors import BpoError
from bpo.toy import verdicts as V
from bpo.toy.claims import check_claims
from bpo.toy.docs_tables import BEGIN, END, replace_block


@pytest.mark.parametrize("ci, direction, thr, expected", [
    ((0.01, 0.2), ">", 0.0, "holds"), ((-0.2, -0.01), ">", 0.0, "fails"), ((-0.1, 0.1), ">", 0.0, "unresolved"),
    ((-0.2, -0.01), "<", 0.0, "holds"), ((0.01, 0.2), "<", 0.0, "fails"), ((-0.1, 0.1), "<", 0.0, "unresolved"),
    ((0.31, 0.5), ">", 0.3, "holds"), ((0.2, 0.35), ">", 0.3, "unresolved"), ((0.1, 0.29), ">", 0.3, "fails"),
    ((0.0, 0.2), ">", 0.0, "unresolved"),  # touching the threshold does not exclude it
])
def test_verdict_rule(ci, direction, thr, expected):
    assert V.verdict(ci, direction, thr) == expected


def test_combine_and_bad_direction():
    assert V.combine(["holds", "holds"]) == "holds"
    assert V.combine(["holds", "unresolved"]) == "unresolved"
    assert V.combine(["unresolved", "fails", "holds"]) == "fails"
    with pytest.raises(ValueError):
        V.verdict((0, 1), ">=")


def test_paired_bootstrap_is_exact_when_every_image_moves_the_same():
    """Seed 1: base (1 of 2 hallucinated) on every image, model 0 of 2: diff 0.5 in every resample.
    Seed 2: base 1/4, model 0/4: diff 0.25. Pooled mean over seeds: 0.375, interval [0.375, 0.375]."""
    s1 = {"base": np.tile([1, 2, 1, 1], (7, 1)), "m": np.tile([0, 2, 1, 1], (7, 1))}
    s2 = {"base": np.tile([1, 4, 3, 3], (5, 1)), "m": np.tile([0, 4, 3, 3], (5, 1))}
    res = V.paired_bootstrap([s1, s2], lambda d: V.chair_i(d["base"]) - V.chair_i(d["m"]), n_boot=200)
    assert res["per_seed"] == pytest.approx([0.5, 0.25])
    assert res["value"] == pytest.approx(0.375)
    assert res["ci"] == pytest.approx((0.375, 0.375))


def test_paired_bootstrap_uses_one_draw_for_both_models():
    """Images differ wildly (0 or 4 hallucinations) but the model removes exactly one on each image with
    some: paired, the difference is never <= 0; unpaired resampling would often put it below 0."""
    rng = np.random.default_rng(1)
    h = rng.choice([0, 4], size=60)
    base = np.stack([h, np.full(60, 4), np.zeros(60, int), np.ones(60, int)], 1)
    model = base.copy()
    model[:, 0] = np.maximum(h - 1, 0)
    res = V.paired_bootstrap([{"base": base, "m": model}], lambda d: V.chair_i(d["base"]) - V.chair_i(d["m"]),
                             n_boot=500)
    assert res["ci"][0] > 0 and V.verdict(res["ci"], ">") == "holds"
    with pytest.raises(ValueError, match="same images"):
        V.paired_bootstrap([{"a": base, "b": base[:10]}], lambda d: V.chair_i(d["a"]))


def test_window_bootstrap_by_hand():
    res = V.window_bootstrap([[1.0, 1.0], [0.0, 0.0]], [[-2.0, -2.0], [-1.0, -1.0]], n_boot=100)
    assert res["per_seed"] == [-3.0, -1.0] and res["value"] == -2.0 and res["ci"] == pytest.approx((-2.0, -2.0))


def _seed(seed, base_h, bpo_h, sft_h, self_h, n=40, ment=4, rec=(3, 4)):
    row = lambda h: np.tile([h, ment, *rec], (n, 1)).tolist()  # noqa: E731
    return {"seed": seed, "noise": [{"t": 0, "counts": row(1)}, {"t": 900, "counts": row(3)}],
            "results": {"base": {"counts": row(base_h)}, "bpo_weakened": {"counts": row(bpo_h)},
                        "sft": {"counts": row(sft_h)}, "dpo_self": {"counts": row(self_h)}}}


def test_claims_on_synthetic_counts(tmp_path):
    """base CHAIR_i 2/4, BPO 1/4 (cut 50%), SFT 1/4 (tie), self 0/4 (better than BPO); noise 1/4 -> 3/4."""
    seeds = [_seed(0, 2, 1, 1, 0), _seed(1, 2, 1, 1, 0)]
    claims = check_claims(seeds, tmp_path, {"reg": ("bpo_weakened", "dpo_self"), "paper": ("paper_w", "paper_s")},
                          n_boot=100)
    got = {c["claim"][:3]: c for c in claims}
    assert list(got) == ["(a)", "(b)", "(c)", "(d)"]  # no training logs: no (e); no paper variants: none
    assert got["(a)"]["verdict"] == "holds" and got["(a)"]["parts"][0]["value"] == pytest.approx(0.5)
    assert got["(b)"]["verdict"] == "holds"
    assert [p["value"] for p in got["(b)"]["parts"]] == pytest.approx([0.5, 1.0])
    assert got["(c)"]["verdict"] == "unresolved" and got["(c)"]["parts"][0]["ci"] == pytest.approx([0.0, 0.0])
    assert got["(d)"]["verdict"] == "fails" and got["(d)"]["parts"][0]["value"] == pytest.approx(-0.25)
    # recall falling to 2/4 of 3/4 (ratio 0.67 < 0.9) makes (b) fail even with the cut
    seeds[0]["results"]["bpo_weakened"]["counts"] = np.tile([1, 4, 2, 4], (40, 1)).tolist()
    seeds[1]["results"]["bpo_weakened"]["counts"] = np.tile([1, 4, 2, 4], (40, 1)).tolist()
    b = next(c for c in check_claims(seeds, tmp_path, {"reg": ("bpo_weakened", "dpo_self")}, n_boot=50)
             if c["claim"].startswith("(b)"))
    assert b["verdict"] == "fails" and [p["verdict"] for p in b["parts"]] == ["holds", "fails"]


def test_docs_block_is_replaced_between_markers_only():
    text = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert replace_block(text, "new", "README.md") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(BpoError, match="README.md: needs exactly one pair"):
        replace_block("no markers", "new", "README.md")


def test_sweep_selection_criterion():
    """Recall must stay >= 90% of base; among those the lowest CHAIR_i wins; ties to the smaller lr, then fewer
    steps, then the smaller beta."""
    from bpo.toy.sweep import grid_points, select

    rows = lambda h, hits: np.tile([h, 4, hits, 4], (10, 1)).tolist()  # noqa: E731
    grid = {"reg": ((1e-3, 2e-3), (30, 60), (0.1,)), "paper": ((2e-4,), (60,), (0.1, 0.5))}
    counts = {"reg_lr0.001_s30_b0.1": rows(0, 3),  # best CHAIR_i but recall 0.75 < 0.9
              "reg_lr0.001_s60_b0.1": rows(1, 4), "reg_lr0.002_s30_b0.1": rows(1, 4),  # tie: the smaller lr wins
              "reg_lr0.002_s60_b0.1": rows(2, 4),
              "paper_lr0.0002_s60_b0.1": rows(0, 2), "paper_lr0.0002_s60_b0.5": rows(0, 1)}  # no recall: no choice
    assert [name for _, name, _ in grid_points(grid)] == list(counts)  # tie-break order
    results = {"base": {"counts": rows(2, 4)}, **{k: {"counts": v} for k, v in counts.items()}}  # base CHAIR_i 0.5
    out = select([{"results": results}], grid=grid)
    assert out["reg"]["chosen"] == {"lr": 1e-3, "steps": 60, "beta": 0.1, "sft_weight": 1.0}
    assert [r["recall_ok"] for r in out["reg"]["grid"]] == [False, True, True, True]
    assert out["paper"]["chosen"] is None and out["base"]["chair_i"] == pytest.approx(0.5)
    tie = {**results, "reg_lr0.001_s60_b0.1": {"counts": rows(2, 4)}}  # now 0.002 x 30 is alone at the lowest
    assert select([{"results": tie}], grid=grid)["reg"]["chosen"]["lr"] == 2e-3


def test_write_docs_fills_both_files(tmp_path):
    from bpo.toy.docs_tables import METRICS, write_docs

    for f in ("README.md", "docs/toy.md"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(f"# {f}\n{BEGIN}\nstale\n{END}\nrest\n")
    summary = {"config": {"n_eval": 300}, "seeds": [{"seed": 0}, {"seed": 1}], "wall_s": 12.0,
               "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 1, "torch": "9.9"},
               "command": "bpo demo --study", "table": {"base": {m: (0.25, 0.01) for m, _ in METRICS}},
               "claims": [{"verdict": "unresolved", "claim": "(c) x", "numbers": "d = +0.010 [95% -0.002, +0.020]"}]}
    (tmp_path / "summary.json").write_text(__import__("json").dumps(summary))
    files = write_docs(tmp_path / "summary.json", tmp_path)
    for f in files:
        text = f.read_text()
        assert "stale" not in text and text.endswith(f"{END}\nrest\n")
        assert "`bpo demo --study`" in text and "Test CPU, 2 cores, 1 torch threads, torch 9.9" in text
        assert "| base | 0.250 ± 0.010 |" in text and "- **unresolved**: (c) x. d = +0.010" in text

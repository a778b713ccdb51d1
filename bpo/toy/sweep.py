"""``bpo demo --sweep``: choose each training recipe's learning rate on tuning seeds that are never reported.

The criterion is fixed before any run: for each recipe, among the grid points whose recall stays >=
90 % of the base model's (pooled over tuning seeds), the one with the lowest pooled CHAIR_i; ties go
to the smaller learning rate. Evaluation uses the *held-out* scene split, never the eval images the
demo reports, and the tuning seeds (100, 101, ...) are never reported either. The grid is small on
purpose (one BPO variant per recipe, learning rate only; steps and beta stay at the demo's 60 and the
paper's 0.1) so that it runs on a contended 2-core CPU; docs/toy.md records what was run.
The chosen values are then frozen by hand in ``pipeline.RECIPES`` (a sweep never edits code).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bpo.io import atomic_write, write_json
from bpo.toy import verdicts as V
from bpo.toy.hallucination_demo import SeedRun, demo_config, demo_threads
from bpo.toy.stages import default_jobs, run_seeds

TUNING_SEED = 100
GRID = {  # recipe -> learning rates tried (steps, beta fixed: see the module docstring)
    "reg": (1e-3, 2e-3, 4e-3),
    "paper": (2e-4, 5e-4, 1e-3, 2e-3),
}
BASE = {"reg": dict(steps=60, beta=0.1, sft_weight=1.0), "paper": dict(steps=60, beta=0.1, sft_weight=0.0)}
RECALL_KEEP = 0.9


def grid_variants(grid: dict = GRID, base: dict = BASE) -> tuple[dict, dict]:
    """(extra_variants, recipes) for DemoConfig: one bpo_weakened-like variant per (recipe, lr)."""
    variants, recipes = {}, {}
    for recipe, lrs in grid.items():
        for lr in lrs:
            name = f"{recipe}_lr{lr:g}"
            variants[name] = ("weak", ["data.sources=weakened"], name)
            recipes[name] = {"lr": lr, **base[recipe]}
    return variants, recipes


def select(seed_results: list[dict], grid: dict = GRID) -> dict:
    """The fixed criterion on pooled counts: per recipe the chosen lr and every grid point's numbers."""
    def pooled(name):
        return np.concatenate([np.asarray(sr["results"][name]["counts"]) for sr in seed_results])

    base = pooled("base")
    out = {}
    for recipe, lrs in grid.items():
        rows = []
        for lr in lrs:
            c = pooled(f"{recipe}_lr{lr:g}")
            rows.append({"lr": lr, "chair_i": float(V.chair_i(c)), "recall": float(V.recall(c)),
                         "recall_ok": bool(V.recall(c) >= RECALL_KEEP * V.recall(base))})
        ok = [r for r in rows if r["recall_ok"]]
        best = min(ok, key=lambda r: (r["chair_i"], r["lr"])) if ok else None
        out[recipe] = {"chosen_lr": best["lr"] if best else None, "grid": rows}
    out["base"] = {"chair_i": float(V.chair_i(base)), "recall": float(V.recall(base))}
    return out


def run(args, out: Path, run_command) -> int:
    import torch

    cfg = demo_config(args)
    variants, recipes = grid_variants()
    cfg.extra_variants, cfg.recipes = variants, {**cfg.recipes, **recipes}
    if getattr(args, "fast", False):  # the smoke run: 4 steps per grid point
        for r in cfg.recipes.values():
            r["steps"] = cfg.train_steps
    cfg.variants, cfg.eval_split, cfg.analyze = tuple(variants), "heldout", False
    n = getattr(args, "seeds", None) or 2
    seeds = list(range(TUNING_SEED, TUNING_SEED + n))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"bpo demo --sweep: tuning seeds {seeds}, held-out images, grid {GRID}; outputs in {out}")
    threads = demo_threads(args)
    torch.set_num_threads(threads)
    jobs = getattr(args, "jobs", None) or default_jobs(len(seeds), threads)
    results = run_seeds(SeedRun, cfg, out, seeds, print, run_command, jobs=jobs, threads=threads)
    choice = select(results)
    wall = time.perf_counter() - t0
    lines = [f"# Recipe sweep (tuning seeds {', '.join(map(str, seeds))}; {cfg.n_eval} held-out images each; "
             f"{wall:.0f} s)", "", "Criterion (fixed in advance): lowest pooled CHAIR_i among learning rates whose "
             f"pooled recall >= {RECALL_KEEP:.0%} of the base's; ties to the smaller lr.", "",
             f"base: CHAIR_i {choice['base']['chair_i']:.3f}, recall {choice['base']['recall']:.3f}", "",
             "| recipe | lr | CHAIR_i | recall | recall ok | chosen |", "|---|---|---|---|---|---|"]
    for recipe in GRID:
        for r in choice[recipe]["grid"]:
            lines.append(f"| {recipe} | {r['lr']:g} | {r['chair_i']:.3f} | {r['recall']:.3f} | {r['recall_ok']} | "
                         f"{'yes' if r['lr'] == choice[recipe]['chosen_lr'] else ''} |")
    with atomic_write(out / "sweep.md") as fh:
        fh.write("\n".join(lines) + "\n")
    write_json(out / "sweep.json", {"seeds": seeds, "choice": choice, "wall_s": wall,
                                    "timings": [r["timings"] for r in results]})
    print("\n".join(lines))
    print(f"\nsweep: {out / 'sweep.json'} (freeze the chosen values in bpo/toy/hallucination_demo.py RECIPES)")
    return 0

"""Plumbing the toy demos share (hallucination, safety, iterative): one seed's staged run, the public
``bpo`` commands run in-process, the equal training budget, and the report / summary files.

Each demo lives in its own module (:mod:`bpo.toy.hallucination_demo`, :mod:`bpo.toy.safety_demo`,
:mod:`bpo.toy.iterative_demo`) and builds on these.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpo.config import from_dict
from bpo.errors import BpoError
from bpo.io import atomic_write, write_json
from bpo.toy.pretrain import RecipeConfig, pretrain
from bpo.toy.world import WorldConfig


@dataclass
class TrainBudget:
    """The training budget each toy demo gives every variant alike, declared once for all three demos."""

    train_steps: int = 60
    batch_size: int = 16
    lr: float = 2e-3
    lora_r: int = 16
    beta: float = 0.1
    sft_weight: float = 1.0
    max_new_tokens: int = 24


class StagedRun:
    """One seed of a demo: its output folder, and each stage timed and logged (shared by both scenarios)."""

    def __init__(self, cfg, out: Path, seed: int, log, run_command: Callable[[list[str]], int]):
        self.cfg, self.out, self.seed, self.log = cfg, out / f"seed-{seed}", seed, log
        # The face (``bpo demo``) hands down its own dispatcher, so the toy never imports the CLI above it.
        self.run_command = run_command
        self.timings: dict[str, float] = {}

    def bpo(self, *args) -> None:
        """Run one public ``bpo`` command in-process, exactly as typed on a shell."""
        argv = [str(a) for a in args]
        code = self.run_command(argv)
        if code != 0:
            raise BpoError(f"demo stage failed: bpo {shlex.join(argv)} (exit {code})")

    def _stages(self, *stages) -> list:
        """Run ``(name, method)`` stages in order, each timed; their results in the same order."""
        return [self._timed(name, fn) for name, fn in stages]

    def _timed(self, name, fn, *a, **k):
        t0 = time.perf_counter()
        result = fn(*a, **k)
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.log(f"  [seed {self.seed}] {name}: {self.timings[name]}s")
        return result

    def pretrained(self, safety=None) -> Path:
        """The toy model for this seed (``cfg.pretrain_overrides``, optional ``world`` key), cached."""
        over = dict(self.cfg.pretrain_overrides)
        world_cfg = from_dict(WorldConfig, over.pop("world", {}))
        recipe = from_dict(RecipeConfig, {"seed": self.seed, **over})
        return pretrain(world_cfg, recipe, safety=safety, log=lambda s: self.log("  " + s)).path

    def train(self, name: str, data: Path, image_root: Path, *extra: str) -> Path:
        """``bpo train`` with the demo's shared budget (steps, batch, LR, LoRA, beta, NLL weight): equal for all
        variants, which differ only in ``extra``."""
        c, out = self.cfg, self.out / "runs" / name
        self.bpo("train", f"model.name={self.model}", f"data.train={data}", f"data.image_root={image_root}",
            f"run.output_dir={out}", f"run.max_steps={c.train_steps}", f"run.batch_size={c.batch_size}",
            f"optim.lr={c.lr}", "optim.warmup_steps=0", f"lora.r={c.lora_r}", f"lora.alpha={2 * c.lora_r}",
            "lora.dropout=0.0", f"loss.beta={c.beta}", f"loss.sft_weight={c.sft_weight}", f"run.seed={self.seed}",
            "run.progress=false", "run.tensorboard=false", "run.resume=none", *extra)
        return out


def _seed_worker(run_cls, cfg, out: Path, seed: int, run_command, threads: int) -> dict:
    """One seed in a worker process (module level, so ``spawn`` can pickle it)."""
    import torch

    torch.set_num_threads(threads)
    # flushed per line: a worker's stdout is a pipe or file, block-buffered, and the log is the progress report
    return run_cls(cfg, out, seed, functools.partial(print, flush=True), run_command).run()


def run_seeds(run_cls, cfg, out: Path, seeds: list[int], log, run_command, *, jobs: int = 1,
              threads: int = 1) -> list[dict]:
    """``run_cls(cfg, out, seed, log, run_command).run()`` for every seed, in seed order; ``jobs`` > 1 runs that
    many seeds at once, each in a fresh ``spawn`` process with ``threads`` torch threads.

    A seed's numbers depend on its seed and thread count only (each builds and caches its own toy model and
    writes to its own ``seed-N`` folder), so the results equal a sequential run's; the log lines interleave.
    """
    if jobs <= 1 or len(seeds) <= 1:
        return [run_cls(cfg, out, s, log, run_command).run() for s in seeds]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log(f"running {len(seeds)} seeds, {jobs} at a time ({threads} torch thread(s) each)")
    # spawn, not fork: a forked child of a process whose OpenMP pool has started can hang in its first op
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_seed_worker, run_cls, cfg, out, s, run_command, threads) for s in seeds]
        return [f.result() for f in futures]


def default_jobs(n_seeds: int, threads: int) -> int:
    """As many seeds at once as the cores hold at ``threads`` each (at least 1, at most ``n_seeds``)."""
    return max(1, min(n_seeds, (os.cpu_count() or 1) // max(1, threads)))


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, population std) of the values that are not None; (nan, nan) if none are."""
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_line(info: dict | None = None) -> str:
    m = info or machine_info()
    return f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}"


def write_outputs(out: Path, lines: list[str], plots: str, cfg, seed_results: list[dict], table: dict,
                  claims: list[dict], wall: float) -> Path:
    """Finish a demo report (setup, stage timings, plots) and write ``report.md`` and ``summary.json``."""
    lines = lines + ["", "## Setup", "", "```json", json.dumps(cfg.__dict__, indent=1, default=str), "```", "",
                     "Per-seed stage timings (s): " + "; ".join(f"seed {s['seed']}: {s['timings']}"
                                                                for s in seed_results), "", plots]
    report = out / "report.md"
    with atomic_write(report) as fh:
        fh.write("\n".join(lines) + "\n")
    write_json(out / "summary.json", {"config": cfg.__dict__, "table": table, "claims": claims,
                                      "seeds": seed_results, "wall_s": wall, "machine": machine_info(),
                                      "command": getattr(cfg, "command", "bpo demo")})
    return report


def log_results(log, table_text: str, claim_lines: list[str], report: Path, out: Path, wall: float) -> None:
    """The end of a demo run on the terminal: the table, each claim with its numbers, where the files are."""
    log("\n" + table_text + "\n")
    for line in claim_lines:
        log(line)
    log(f"\nreport: {report}\nsummary: {out / 'summary.json'}\nwall time: {wall:.0f}s")


def start(args, out: Path):
    """(seeds, start time, log) of a demo run: seeds 0..N-1 from ``--seeds``, the output folder made."""
    out.mkdir(parents=True, exist_ok=True)
    return list(range(getattr(args, "seeds", None) or 1)), time.perf_counter(), print


def format_table(table: dict, labels: list[str]) -> str:
    """A markdown table of ``{model: {label: (mean, std)}}``: ``mean ± std`` (``n/a`` for NaN)."""
    head = "| model | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n"
    rows = []
    for name, vals in table.items():
        cells = ["n/a" if m != m else f"{m:.3f} ± {s:.3f}" if s else f"{m:.3f}"
                 for m, s in (vals[label] for label in labels)]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows)

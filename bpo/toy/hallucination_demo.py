"""``bpo demo``: the Bootstrapped-PO pipeline in the toy world, through the public stages only.

Per seed: pretrain (or fetch) the toy LLaVA, export the world as bpo records, bootstrap negatives
with ``bpo bootstrap weaken | inject | self``, train every variant with ``bpo train`` at the same
budget, generate with ``bpo generate`` and score with ``bpo eval chair | pope``, plus the toy's
exact measurements (prior pull, parse rate) and ``bpo analyze curves | noise``. Every stage is a
command line a user could type; the toy only supplies the world, the model and the measurements.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bpo.data.records import read_records, write_records
from bpo.models.loading import load
from bpo.toy.chair import image_counts
from bpo.toy.claims import check_claims, claim_line
from bpo.toy.data import _image_rel, export
from bpo.toy.docs_tables import format_table, summarize, write_docs, write_report
from bpo.toy.measure import existence_prior, noise_curve, prior_pull
from bpo.toy.model import load_world
from bpo.toy.stages import StagedRun, TrainBudget, default_jobs, log_results, run_seeds
from bpo.toy.world import parse_caption


@dataclass
class DemoConfig(TrainBudget):
    n_train: int = 256  # chosen-only records to bootstrap from
    n_eval: int = 100  # eval images for CHAIR, the prior pull and the noise sweep
    n_pope: int = 40  # eval images whose POPE questions are asked (3 splits x ~4 questions each)
    weaken_step: int = 500
    noise_steps: tuple = (0, 100, 300, 500, 700, 900)
    variants: tuple = ("bpo_weakened", "bpo_weakened_injected", "dpo_self", "sft", "paper_weakened",
                       "paper_weakened_injected", "paper_self")
    pretrain_overrides: dict = field(default_factory=dict)
    # Per-recipe training settings (see RECIPES); a variant's recipe overrides the shared lr/steps/beta/NLL.
    recipes: dict = field(default_factory=lambda: {k: dict(v) for k, v in RECIPES.items()})
    eval_split: str = "eval"  # "heldout" in the sweep: tuning never sees the reported eval images
    n_boot: int = 2000  # paired-bootstrap resamples per claim
    extra_variants: dict = field(default_factory=dict)  # name -> like VARIANTS (the sweep's grid points)
    analyze: bool = True  # noise sweep, curves and token probe (the sweep skips them)


FAST = dict(n_train=32, n_eval=16, n_pope=8, train_steps=4, batch_size=8, max_new_tokens=12, noise_steps=(0, 500),
            # the variants every claim needs (the +injected ones only add table rows), each for 4 steps
            variants=("bpo_weakened", "dpo_self", "sft", "paper_weakened", "paper_self"),
            recipes={"reg": dict(lr=2e-3, steps=4, beta=0.1, sft_weight=1.0),
                     "paper": dict(lr=5e-4, steps=4, beta=0.1, sft_weight=0.0)},
            pretrain_overrides=dict(vision_steps=20, text_sentences=400, text_epochs=1.0, align_images=64,
                                    align_projector_steps=5, align_steps=20, align_stop_chair=None,
                                    heldout_images=16, align_eval_every=10))

# Training recipes, frozen from the sweep on tuning seeds (docs/toy.md, "Choosing each recipe's settings").
# reg: the first demo recipe, DPO + an NLL term of weight 1 on the chosen answer (SFT uses it too, so
# SFT and reg-BPO have equal budgets). paper: the Bootstrapped-PO paper's objective, plain sigmoid DPO
# with LoRA and no NLL term.
RECIPES = {
    # sweep choices (lr x steps x beta) on the base models of the world with hidden objects (2026-12-01, tuning
    # seeds 100 and 101; docs/toy.md)
    "reg": dict(lr=4e-3, steps=30, beta=0.1, sft_weight=1.0),
    "paper": dict(lr=5e-4, steps=30, beta=0.1, sft_weight=0.0),
}

# variant -> (data key, train overrides, recipe). Same batch and LoRA for all.
VARIANTS = {
    "bpo_weakened": ("weak", ["data.sources=weakened"], "reg"),
    "bpo_weakened_injected": ("weak_inj", ["data.sources=weakened,injected"], "reg"),
    "dpo_self": ("self", ["data.sources=self"], "reg"),
    "sft": ("train", ["loss.type=sft"], "reg"),
    "paper_weakened": ("weak", ["data.sources=weakened"], "paper"),
    "paper_weakened_injected": ("weak_inj", ["data.sources=weakened,injected"], "paper"),
    "paper_self": ("self", ["data.sources=self"], "paper"),
}
# recipe -> (its BPO variant, its self-negative variant) for the claims
RECIPE_VARIANTS = {"reg": ("bpo_weakened", "dpo_self"), "paper": ("paper_weakened", "paper_self")}


class SeedRun(StagedRun):
    def run(self) -> dict:
        *_, results = self._stages(("pretrain", self.pretrain), ("export", self.export),
                                   ("bootstrap", self.bootstrap), ("train", self.train_all),
                                   ("evaluate", self.evaluate_all))
        self.noise = []
        if self.cfg.analyze:
            self._timed("analyze", self.analyze)
        return {"seed": self.seed, "model": str(self.model), "results": results, "timings": self.timings,
                "noise": self.noise}

    def pretrain(self):
        self.model = self.pretrained()

    def export(self):

        self.world = load_world(self.model)
        self.data = export(self.world, self.out / "data", n_train=self.cfg.n_train, n_eval=self.cfg.n_eval,
                           eval_split=self.cfg.eval_split)
        # POPE on the first n_pope eval images (its questions are ~12x the images: the slow part of evaluation)
        keep = {f"{self.cfg.eval_split}-{i:06d}" for i in range(self.cfg.n_pope)}
        self.pope = self.out / "data" / "pope_subset.jsonl"
        write_records(self.pope, [r for r in read_records(self.data.pope) if r.id.rsplit("-", 2)[0] in keep])

    def bootstrap(self):
        d, c, m = self.data, self.cfg, self.model
        common = ["--model", m, "--image-root", d.image_root, "--batch-size", 64, "--max-new-tokens",
                  c.max_new_tokens, "--seed", self.seed, "--no-progress"]
        self.files = {"train": d.train, "weak": self.out / "weak.jsonl", "weak_inj": self.out / "weak_inj.jsonl",
                      "self": self.out / "self.jsonl"}
        self.bpo("bootstrap", "weaken", "--data", d.train, "--out", self.files["weak"], "--steps", c.weaken_step, *common)
        self.bpo("bootstrap", "inject", "--backend", "rules", "--lm", d.vocab, "--data", self.files["weak"], "--out",
            self.files["weak_inj"], "--seed", self.seed, "--no-progress")
        self.bpo("bootstrap", "self", "--data", d.train, "--out", self.files["self"], *common)

    def train_all(self):
        self.runs = {}
        for name in self.cfg.variants:
            key, extra, recipe = VARIANTS.get(name) or self.cfg.extra_variants[name]
            r = self.cfg.recipes[recipe]  # later key=value overrides win over train()'s shared budget
            extra = [*extra, f"optim.lr={r['lr']}", f"run.max_steps={r['steps']}", f"loss.beta={r['beta']}",
                     f"loss.sft_weight={r['sft_weight']}"]
            self.runs[name] = self.train(name, self.files[key], self.data.image_root, *extra)

    def evaluate(self, name: str, adapter: Path | None) -> dict:
        d, c = self.data, self.cfg
        ev = self.out / "eval" / name
        if adapter:  # retrained just now: answers of an earlier run's adapter must not be resumed
            import shutil

            shutil.rmtree(ev, ignore_errors=True)
        ad = ["--adapter", adapter] if adapter else []
        gen = ["--model", self.model, *ad, "--image-root", d.image_root, "--batch-size", 64, "--no-progress"]
        self.bpo("generate", "--data", d.chair, "--out", ev / "chair_responses.jsonl", *gen,
            "--max-new-tokens", c.max_new_tokens)
        self.bpo("eval", "chair", "--responses", ev / "chair_responses.jsonl", "--gt", d.chair, "--vocab", d.vocab,
            "--out", ev / "chair.json", "--model", self.model, *(["--adapter", adapter] if adapter else []))
        self.bpo("generate", "--data", self.pope, "--out", ev / "pope_responses.jsonl", *gen, "--max-new-tokens", 4)
        self.bpo("eval", "pope", "--responses", ev / "pope_responses.jsonl", "--gt", self.pope, "--out", ev / "pope.json")
        chair = json.loads((ev / "chair.json").read_text())["metrics"]
        pope = json.loads((ev / "pope.json").read_text())["metrics"]
        model, processor = load(str(self.model), adapter=str(adapter) if adapter else None)
        scenes = [self.world.scene(c.eval_split, i) for i in range(c.n_eval)]
        pull = prior_pull(model, processor, self.world, scenes)
        prior = existence_prior(model, processor, self.world, scenes[: c.n_pope])  # the prior in yes/no answers
        return {"chair": chair, "pope": pope, "pull": pull, "existence_prior": prior,
                "parse_rate": _parse_rate(self.world, ev),
                "counts": _counts(self.world, ev, scenes)}

    def evaluate_all(self) -> dict:
        results = {"base": self.evaluate("base", None)}
        for name, run in self.runs.items():
            results[name] = self.evaluate(name, run / "adapter")
        return results

    def analyze(self):
        runs = [self.runs[v] for v in self.cfg.variants]
        self.bpo("analyze", "curves", *runs, "--out", self.out / "plots" / "curves", "--labels", ",".join(self.cfg.variants),
            "--window", max(1, self.cfg.train_steps // 10))
        model, processor = load(str(self.model))
        scenes = [self.world.scene(self.cfg.eval_split, i) for i in range(self.cfg.n_eval)]
        self.noise = noise_curve(model, processor, self.world, scenes, self.cfg.noise_steps, seed=self.seed)
        truths = {s.id: s.names for s in scenes}
        for row in self.noise:  # per-image counts for the paired bootstrap; the captions stay in the files
            row["counts"] = image_counts(dict(zip(truths, row.pop("captions"))), truths, self.world.kinds).tolist()
        self._token_probe(scenes)

    def _token_probe(self, scenes):
        """Fig. 5 analog through `bpo analyze noise`: after "a A and a", the partner's colour vs another absent one."""
        world = self.world
        for scene in scenes:
            a = next((n for n in scene.names if world.partner[n] not in scene.names), None)
            if a is None:
                continue
            partner = world.partner[a]
            # the comparison colour is neither in the image nor the colour of any present object's partner
            taken = {n.split()[0] for n in scene.names} | {world.partner[n].split()[0] for n in scene.names}
            other = next((c for c in world.cfg.colours if c not in taken), None)
            if other is None:
                continue
            steps = ",".join(str(t) for t in self.cfg.noise_steps)
            self.bpo("analyze", "noise", "--model", self.model, "--image", self.data.image_root / _image_rel(scene),
                "--prompt", "describe the image .", "--prefix", f"a {a} and a", "--targets",
                f"{partner.split()[0]},{other}", "--steps", steps, "--samples", 2, "--seed", self.seed,
                "--max-new-tokens", self.cfg.max_new_tokens, "--out", self.out / "plots" / "noise")
            return


def _counts(world, ev: Path, scenes) -> list[list[int]]:
    """Per eval image (hallucinated, mentioned, hits, true) of the generated captions, for the bootstrap."""
    rows = [json.loads(line) for line in (ev / "chair_responses.jsonl").read_text().splitlines()]
    return image_counts({r["id"]: r["response"] for r in rows}, {s.id: s.names for s in scenes},
                        world.kinds).tolist()


def _parse_rate(world, ev: Path) -> float:
    rows = [json.loads(line) for line in (ev / "chair_responses.jsonl").read_text().splitlines()]
    ok = sum(parse_caption(r["response"], world.kinds) is not None for r in rows)
    return ok / max(1, len(rows))


DEFAULT_THREADS = 1
STUDY = dict(n_eval=300, n_pope=100)  # `--study`: with --seeds 5 (the default of --study)


def demo_config(args) -> DemoConfig:
    """The demo's config from the command line (``--fast``, ``--study``, ``--eval-images``, ``--threads``)."""
    over = dict(FAST) if getattr(args, "fast", False) else {}
    if getattr(args, "study", False):
        over.update(STUDY)
    if getattr(args, "eval_images", None):
        over["n_eval"] = args.eval_images
        over["n_pope"] = min(over.get("n_pope", DemoConfig.n_pope), args.eval_images)
    # the pretraining thread count is part of the toy model's cache key: another count, another model
    over["pretrain_overrides"] = {**over.get("pretrain_overrides", {}), "threads": demo_threads(args)}
    return DemoConfig(**over)


def demo_threads(args) -> int:
    """``--threads``, else 1: the toy's ops are so small that a second thread costs more in barriers than it
    computes (measured: 2,000 alignment steps took ~400 s on 2 threads, ~150-220 s on 1), and ``--jobs`` gives
    the other core a seed of its own."""
    return getattr(args, "threads", None) or DEFAULT_THREADS


def run_demo_seeds(args, cfg, out: Path, seeds: list[int], log, run_command) -> list[dict]:
    """Every seed's :class:`SeedRun` at ``--threads`` each, ``--jobs`` at once (default: as many as the cores hold)."""
    import torch

    threads = demo_threads(args)
    torch.set_num_threads(threads)
    jobs = getattr(args, "jobs", None) or default_jobs(len(seeds), threads)
    return run_seeds(SeedRun, cfg, out, seeds, log, run_command, jobs=jobs, threads=threads)


def seed_list(args) -> list[int]:
    n = getattr(args, "seeds", None) or (5 if getattr(args, "study", False) else 1)
    first = getattr(args, "first_seed", 0) or 0
    return list(range(first, first + n))


def command_line(args) -> str:
    """The ``bpo demo`` command that reproduces this run (written beside its results)."""
    parts = ["bpo demo"]
    for flag, attr in (("--fast", "fast"), ("--study", "study")):
        if getattr(args, attr, False):
            parts.append(flag)
    for flag, attr in (("--seeds", "seeds"), ("--eval-images", "eval_images"), ("--threads", "threads"),
                       ("--jobs", "jobs")):
        if getattr(args, attr, None):
            parts.append(f"{flag} {getattr(args, attr)}")
    return " ".join(parts)


def main(args, out: Path, run_command) -> int:
    cfg = demo_config(args)
    cfg.command = command_line(args)
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_list(args)
    t0 = time.perf_counter()
    log = print
    log(f"bpo demo: toy-world Bootstrapped PO, seed(s) {seeds}, {cfg.n_eval} eval images, outputs in {out}")
    results = run_demo_seeds(args, cfg, out, seeds, log, run_command)
    table = summarize(results)
    claims = check_claims(results, out, RECIPE_VARIANTS, n_boot=cfg.n_boot)
    wall = time.perf_counter() - t0
    report = write_report(out, cfg, results, table, claims, wall)
    log_results(log, format_table(table), [claim_line(c) for c in claims], report, out, wall)
    if getattr(args, "write_docs", False):
        for f in write_docs(out / "summary.json"):
            log(f"wrote the demo tables into {f}")
    return 0



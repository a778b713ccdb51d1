"""``bpo iterate``: several rounds of Bootstrapped PO, each from the policy the round before trained.

Round ``r`` (1..N) is a list of public ``bpo`` command lines:

1. ``bpo bootstrap weaken`` (then ``inject`` / ``self`` if asked) on the round's chosen-only records,
   answered by the round ``r-1`` policy (``--model BASE --adapter round-(r-1)/train/adapter``; the base
   model in round 1);
2. ``bpo train`` on those negatives, continuing the round ``r-1`` adapter (``lora.init_from``) with
   pi_ref = the round ``r-1`` policy (``loss.reference=start``, iterative DPO) or the base model;
3. ``bpo generate`` + ``bpo eval chair`` (and ``pope``) on a held-out set.

Round 0 is the base model's evaluation. The rounds are run by :func:`bpo.pipeline.run_recipe`, so
they resume by the pipeline's rules: a finished step is skipped, a killed step resumes (the commands
themselves resume), and once a step runs every later step starts over. A recipe cannot say this
(round 1 has no previous adapter; the chain of bootstrap commands depends on the sources), which is
why this is a command with a typed config rather than a YAML recipe.

Each round's chosen-only records are written to ``inputs/sft-r<r>-<hash>.jsonl`` (the same records every
round, or the r-th of N disjoint slices with ``records: fresh``); the content hash is in the file name, so
editing the records changes the round's command lines and redoes that round and the ones after it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bpo.config import option
from bpo.errors import BpoError
from bpo.io import atomic_write
from bpo.iterative.report import write_iteration_report
from bpo.pipeline import Recipe, Step, run_recipe

SOURCES = ("weakened", "injected", "self")


@dataclass
class IterateConfig:
    model: str = option("", help="base model (hub id or local path); every round's adapter applies to it")
    sft: str = option("", help="chosen-only records JSONL (the input of `bpo bootstrap`)")
    image_root: str | None = option(None, help="directory the records' image paths are relative to")
    heldout: str = option("", help="held-out describe records for CHAIR (generation prompts)")
    chair_gt: str | None = option(None, help="CHAIR ground truth: records with meta.objects or COCO instances "
                                             "JSON (default: heldout)")
    vocab: str | None = option(None, help="object vocabulary JSON for CHAIR (default: COCO-80)")
    pope: str | None = option(None, help="POPE records (meta.label) to answer each round; none = skip POPE")
    out: str = option("runs/iterative", help="output folder: round-<r>/, report.md, rounds.json, rounds.png")
    rounds: int = option(3, help="number of training rounds")
    records: str = option("same", help="same: every round bootstraps from all records; fresh: the records are "
                                       "cut into `rounds` disjoint slices in file order, round r uses slice r",
                          choices=("same", "fresh"))
    sources: list[str] = option(default_factory=lambda: ["weakened"],
                                help="negatives per round, chained in this order: weakened, injected, self")
    reference: str = option("previous", help="pi_ref of round r: previous = the round r-1 policy (iterative "
                                             "DPO); base = the base model in every round",
                            choices=("previous", "base"))
    weaken_steps: str = option("500", help="`bootstrap weaken --steps` (noise step(s), e.g. 300,500)")
    inject_backend: str = option("rules", help="`bootstrap inject --backend` (rules, self, hf, openai)")
    inject_lm: str | None = option(None, help="`bootstrap inject --lm` (rules: the CHAIR vocabulary; default: "
                                              "vocab)")
    bootstrap_args: str = option("", help="extra options for `bootstrap weaken` / `self` (e.g. --dtype bfloat16)")
    generate_args: str = option("", help="extra options for `bpo generate` (e.g. --dtype bfloat16)")
    batch_size: int = option(8, help="prompts per forward pass when bootstrapping and generating")
    max_new_tokens: int = option(64, help="longest negative and longest held-out description")
    train_config: str | None = option(None, help="`bpo train --config` YAML shared by every round")
    train: dict = option(default_factory=dict, help="`bpo train` overrides for every round, e.g. "
                                                    "train.run.max_steps=60 train.optim.lr=1e-5")
    negatives_gt: str | None = option(None, help="ground truth of the sft records' images for the negatives' "
                                                 "CHAIR (default: the sft file, when its records have meta.objects)")
    eval_base: bool = option(True, help="evaluate the base model as round 0")
    seed: int = option(0, help="round r bootstraps with seed + r - 1 and trains with seed")

    def __post_init__(self):
        if self.rounds < 1:
            raise BpoError("rounds must be >= 1")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise BpoError(f"sources: {bad or '(empty)'} not understood; choose from {', '.join(SOURCES)}")
        if len(set(self.sources)) != len(self.sources):
            raise BpoError("sources: each source once")

    def validate(self, require_paths: bool = True) -> None:
        for key in ("model", "sft", "heldout"):
            if not getattr(self, key):
                raise BpoError(f"{key} is required (see `bpo iterate --help-config`)")
        for key in ("sft", "heldout", "chair_gt", "pope", "train_config", "negatives_gt"):
            path = getattr(self, key)
            if require_paths and path and not Path(path).is_file():
                raise BpoError(f"{key}: {path} does not exist")


@dataclass
class RoundPaths:
    """Where round ``r`` keeps its files (round 0 = the base model: only ``eval``)."""

    root: Path
    sft: Path | None = None
    chain: list[Path] = field(default_factory=list)  # one file per bootstrap source, the last = training data

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def adapter(self) -> Path:
        return self.train / "adapter"

    @property
    def prefs(self) -> Path:
        return self.chain[-1]

    @property
    def eval(self) -> Path:
        return self.root / "eval"


def round_paths(cfg: IterateConfig, r: int, sft: Path | None = None) -> RoundPaths:
    root = Path(cfg.out) / f"round-{r}"
    names = {"weakened": "weak", "injected": "inj", "self": "self"}
    chain, acc = [], []
    for s in cfg.sources:
        acc.append(names[s])
        chain.append(root / ("neg_" + "_".join(acc) + ".jsonl"))
    return RoundPaths(root=root, sft=sft, chain=chain if r else [])


def write_round_inputs(cfg: IterateConfig, *, write: bool = True) -> list[Path]:
    """The chosen-only records of rounds 1..N, each under a content-addressed name (see the module doc);
    ``write=False`` only names them (a dry run writes nothing)."""
    import hashlib

    lines = [ln for ln in Path(cfg.sft).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise BpoError(f"{cfg.sft}: no records")
    if cfg.records == "fresh" and len(lines) < cfg.rounds:
        raise BpoError(f"{cfg.sft}: records=fresh needs at least one record per round ({len(lines)} < "
                       f"{cfg.rounds}); use records=same or fewer rounds")
    out = []
    for r in range(1, cfg.rounds + 1):
        part = lines if cfg.records == "same" else slice_for(lines, r, cfg.rounds)
        text = "\n".join(part) + "\n"
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        path = Path(cfg.out) / "inputs" / f"sft-r{r}-{digest}.jsonl"
        if write and not path.exists():
            with atomic_write(path) as fh:
                fh.write(text)
        out.append(path)
    return out


def slice_for(items: list, r: int, rounds: int) -> list:
    """The r-th (1-based) of ``rounds`` near-equal consecutive slices (the first ones get the remainder)."""
    n = len(items)
    bounds = [(i * n) // rounds for i in range(rounds + 1)]
    return items[bounds[r - 1]:bounds[r]]


def _q(*parts) -> str:
    return shlex.join(str(p) for p in parts)


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif isinstance(v, (list, tuple)):
            out.append(f"{key}={','.join(str(x) for x in v)}")
        else:
            out.append(f"{key}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}")
    return out


def eval_steps(cfg: IterateConfig, r: int, rp: RoundPaths, policy: list[str]) -> list:
    ev = rp.eval
    img = ["--image-root", cfg.image_root] if cfg.image_root else []
    gen = [*policy, *img, "--batch-size", cfg.batch_size, "--no-progress", "--seed", cfg.seed]
    extra = shlex.split(cfg.generate_args)
    vocab = ["--vocab", cfg.vocab] if cfg.vocab else []
    steps = [
        Step(f"r{r}-generate", _q("generate", "--data", cfg.heldout, "--out", ev / "chair_responses.jsonl", *gen,
                                  "--max-new-tokens", cfg.max_new_tokens) + _tail(extra),
             [str(ev / "chair_responses.jsonl")]),
        Step(f"r{r}-chair", _q("eval", "chair", "--responses", ev / "chair_responses.jsonl", "--gt",
                               cfg.chair_gt or cfg.heldout, *vocab, "--out", ev / "chair.json", *policy),
             [str(ev / "chair.json")]),
    ]
    if cfg.pope:
        steps += [
            Step(f"r{r}-pope-generate", _q("generate", "--data", cfg.pope, "--out", ev / "pope_responses.jsonl",
                                           *gen, "--max-new-tokens", 8) + _tail(extra),
                 [str(ev / "pope_responses.jsonl")]),
            Step(f"r{r}-pope", _q("eval", "pope", "--responses", ev / "pope_responses.jsonl", "--gt", cfg.pope,
                                  "--out", ev / "pope.json"), [str(ev / "pope.json")]),
        ]
    return steps


def _tail(extra: list[str]) -> str:
    return (" " + shlex.join(extra)) if extra else ""


def bootstrap_steps(cfg: IterateConfig, r: int, rp: RoundPaths, policy: list[str]) -> list:
    img = ["--image-root", cfg.image_root] if cfg.image_root else []
    common = [*policy, *img, "--batch-size", cfg.batch_size, "--max-new-tokens", cfg.max_new_tokens,
              "--seed", cfg.seed + r - 1, "--no-progress"]
    extra = _tail(shlex.split(cfg.bootstrap_args))
    steps, data = [], rp.sft
    for source, out in zip(cfg.sources, rp.chain):
        if source == "weakened":
            run = _q("bootstrap", "weaken", "--data", data, "--out", out, "--steps", cfg.weaken_steps, *common) + extra
        elif source == "self":
            run = _q("bootstrap", "self", "--data", data, "--out", out, *common) + extra
        else:
            lm = cfg.inject_lm or cfg.vocab
            self_model = policy if cfg.inject_backend == "self" else []
            run = _q("bootstrap", "inject", "--backend", cfg.inject_backend, *(["--lm", lm] if lm else []),
                     *self_model, "--data", data, "--out", out, "--seed", cfg.seed + r - 1, "--no-progress")
        steps.append(Step(f"r{r}-{source}", run, [str(out)]))
        data = out
    return steps


def train_step(cfg: IterateConfig, r: int, rp: RoundPaths, prev: RoundPaths | None):
    # The round's own keys come last so a shared override cannot point two rounds at one folder.
    keys = [*_flatten(cfg.train), f"model.name={cfg.model}", f"data.train={rp.prefs}",
            f"data.sources={','.join(cfg.sources)}", f"run.output_dir={rp.train}", f"run.seed={cfg.seed}",
            "run.resume=auto", "run.progress=false"]
    if cfg.image_root:
        keys.append(f"data.image_root={cfg.image_root}")
    if prev is not None:
        keys += [f"lora.init_from={prev.adapter}",
                 f"loss.reference={'start' if cfg.reference == 'previous' else 'base'}"]
    head = ["train", *(["--config", cfg.train_config] if cfg.train_config else [])]
    # the whole folder is the step's output: a round that starts over must not resume an old checkpoint
    return Step(f"r{r}-train", _q(*head, *keys), [str(rp.train)])


def build_steps(cfg: IterateConfig, sft_files: list[Path]) -> tuple[list, list[RoundPaths]]:
    steps, paths = [], []
    base = ["--model", cfg.model]
    if cfg.eval_base:
        rp0 = round_paths(cfg, 0)
        steps += eval_steps(cfg, 0, rp0, base)
    paths.append(round_paths(cfg, 0))
    prev = None
    for r in range(1, cfg.rounds + 1):
        rp = round_paths(cfg, r, sft_files[r - 1])
        policy = base + (["--adapter", prev.adapter] if prev else [])
        steps += bootstrap_steps(cfg, r, rp, policy)
        steps.append(train_step(cfg, r, rp, prev))
        steps += eval_steps(cfg, r, rp, base + ["--adapter", rp.adapter])
        paths.append(rp)
        prev = rp
    return steps, paths


def run_iterate(cfg: IterateConfig, *, run_command, force: bool = False, dry_run: bool = False,
                extra_metrics=None, log=print) -> dict:
    """Run (or resume) every round, then write the report. ``extra_metrics(r, adapter|None) -> dict`` adds
    measurements the report cannot derive from files (the toy world's prior pull). ``run_command(argv)``
    runs one ``bpo`` command in-process (the face passes ``bpo.cli.main``)."""
    cfg.validate()
    sft_files = write_round_inputs(cfg, write=not dry_run)
    steps, paths = build_steps(cfg, sft_files)
    recipe = Recipe(path="bpo iterate", vars={}, steps=steps)
    results = run_recipe(recipe, state_dir=Path(cfg.out) / ".pipeline", run_command=run_command, force=force, dry_run=dry_run, log=log)
    if dry_run:
        return {"steps": results}
    report = write_iteration_report(cfg, paths, extra_metrics=extra_metrics)
    return {"steps": results, **report}

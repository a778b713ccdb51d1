"""``bpo bootstrap``: append generated negatives to preference records (resumable, data-parallel).

    bpo bootstrap weaken --model M --data IN.jsonl --image-root DIR --out OUT.jsonl
                         [--steps 500 | 300,500,900] [--mode sample|contrast] [--alpha 1.0]
                         [--plausibility 0.1] [--noise-target pixels|features]
    bpo bootstrap inject --data IN.jsonl --out OUT.jsonl [--backend self|hf|openai] [--model M]
                         [--lm PATH_OR_NAME] [--template zero_shot|few_shot] [--retries 3]
    bpo bootstrap self   --model M --data IN.jsonl --image-root DIR --out OUT.jsonl
    bpo bootstrap blind  --model M --data IN.jsonl --image-root DIR --out OUT.jsonl
    bpo bootstrap merge  --data IN.jsonl --out OUT.jsonl

Shared options: --batch-size 8 --max-new-tokens 64 --temperature T --top-p P --seed 0 --stop S
--on-error skip|raise --dtype float32 --adapter DIR --engine hf|vllm --limit N --no-progress.
Every option is also a config key: ``--batch-size 4`` == ``batch_size=4`` == ``batch_size: 4`` in a
``--config FILE.yaml``; ``bpo bootstrap SUB --help-config`` lists the keys.
Data-parallel: ``accelerate launch -m bpo bootstrap ...``; each rank writes OUT.shard-<rank>.jsonl
and rank 0 merges. A killed job is resumed by running the same command again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bpo.commands.engine_options import (
    GenerationOptions,
    ImageGenerationOptions,
    engine_from,
    redefault,
    settings_from,
)
from bpo.config import CommandGroup, option
from bpo.errors import BpoError
from bpo.jobs import dist_context, errors_path, load_input, merge_shards, run_job
from bpo.models.identity import weights_fingerprint
from bpo.safeguard import check_args

# Per-generator decoding defaults (see docs/bootstrap.md for why): weaken and self sample y ~ p(. | image) with
# temperature 1 and a nucleus that cuts the junk tail (GenerationOptions' defaults), so the ablation differs only
# by the noise; blind is greedy, as Li et al.'s infer_json.py; inject uses the paper's error-injection sampling.


@dataclass(kw_only=True)
class WeakenConfig(ImageGenerationOptions):
    """Image-weakened prompting: answer from the noised image (Pi et al.)."""

    steps: str = option("500", help="diffusion step(s) 0..999, comma-separated; one negative per step "
                                    "(t=900 keeps ~1/3 of the signal)")
    mode: str = option("sample", choices=("sample", "contrast"),
                       help="sample: answer from the noisy image alone; contrast: (1+alpha)*noisy - alpha*clean "
                            "logits, two KV caches")
    alpha: float = option(1.0, help="contrast strength (contrast mode)")
    plausibility: float = option(0.1, help="contrast mode: drop tokens with noisy prob < this x the top noisy "
                                           "prob (0 = off)")
    noise_target: str = option("pixels", choices=("pixels", "features"),
                               help="noise the normalised pixel_values (as the paper) or the projected image "
                                    "embeddings, one row per image token as the language model reads them (verified "
                                    "on LLaVA-1.5, LLaVA-NeXT anyres incl. newline rows, Qwen2-VL, Qwen2.5-VL, "
                                    "Gemma 3 pooled tokens; any model whose projector is named multi_modal_projector, "
                                    "mm_projector or visual.merger)")

    def validate(self, require_paths: bool = True) -> None:
        super().validate(require_paths)
        from bpo.bootstrap.weaken import parse_steps

        parse_steps(self.steps)  # a bad --steps fails now, not after the model has loaded
        if self.engine != "hf":
            raise BpoError("bootstrap weaken edits the model's inputs and needs --engine hf")
        if self.alpha < 0 or not 0 <= self.plausibility < 1:
            raise BpoError("--alpha must be >= 0 and --plausibility in [0, 1); pass e.g. --alpha 1 --plausibility 0.1")


@dataclass(kw_only=True)
class AnswerConfig(ImageGenerationOptions):
    """The model's own answer to the clean image (source: self)."""


@dataclass(kw_only=True)
class BlindConfig(ImageGenerationOptions):
    """The answer to the same conversation without its image (source: blind)."""

    temperature: float = redefault(GenerationOptions, "temperature", 0.0)
    top_p: float = redefault(GenerationOptions, "top_p", 1.0)


@dataclass(kw_only=True)
class InjectConfig(GenerationOptions):
    """Error injection: a language model rewrites the chosen answer with plausible wrong details."""

    model: str | None = redefault(GenerationOptions, "model", None)  # only the self backend needs it
    max_new_tokens: int = redefault(GenerationOptions, "max_new_tokens", 256)
    temperature: float = redefault(GenerationOptions, "temperature", 0.8)
    top_p: float = redefault(GenerationOptions, "top_p", 0.95)
    backend: str = option("self", choices=("self", "hf", "openai", "rules"),
                          help="self = --model's own language model, text only; hf = a local causal LM (--lm); "
                               "openai = an OpenAI-compatible endpoint (--lm model name; OPENAI_BASE_URL, "
                               "OPENAI_API_KEY from the environment); rules = offline object/count/colour/relation "
                               "edits (--lm VOCAB.json, COCO objects when omitted)")
    lm: str | None = option(None, help="causal LM path/id (backend hf), served model name (backend openai) or "
                                       "object vocabulary JSON (backend rules)")
    template: str = option("zero_shot", choices=("zero_shot", "few_shot"),
                           help="zero_shot: rewrite a description (paper default); few_shot: question + answer "
                                "with one worked example per error type")
    retries: int = option(3, help="extra attempts after an empty/identical/refusal/echo output")

    def validate(self, require_paths: bool = True) -> None:
        super().validate(require_paths)
        if self.backend == "self" and not self.model:
            raise BpoError("--backend self needs --model (the MLLM whose language model rewrites the answers)")
        if self.backend in ("hf", "openai") and not self.lm:
            what = "PATH_OR_ID (a causal language model)" if self.backend == "hf" else "MODEL_NAME (the served model)"
            raise BpoError(f"--backend {self.backend} needs --lm {what}")
        if self.retries < 0:
            raise BpoError(f"--retries must be >= 0, not {self.retries}")


@dataclass(kw_only=True)
class MergeConfig:
    """Merge OUT.shard-*.jsonl into OUT (input order, one row per id)."""

    data: str = option(help="the input records (gives the order)")
    out: str = option(help="the --out of the job")


def run_generator(cfg: GenerationOptions, build, desc: str) -> int:
    """Load the input, build the generator (after the distributed context is known), run, report."""
    check_args(cfg, job=("out",))  # before anything is opened for writing: --out may not be an input
    rank, world, barrier, device = dist_context()
    records, input_errors = load_input(cfg.data, on_error=cfg.on_error, limit=cfg.limit)
    if not records and input_errors:
        # Nothing to do: say why before loading any model, and exit non-zero (not "wrote 0 records").
        raise BpoError(f"{cfg.data}: no usable records ({len(input_errors)} skipped; first: {input_errors[0]})")
    if input_errors and rank == 0:  # said now, not only after the model has loaded and the job has run
        print(f"skipping {len(input_errors)} bad record(s) of {cfg.data} (first: {input_errors[0]})", file=sys.stderr)
    generator = build(device)
    # The weights' content, not just their paths: other weights at the same path must not resume old negatives.
    backend = getattr(cfg, "backend", "self")  # only inject has backends; openai / rules have no local weights
    model = {"self": cfg.model, "hf": getattr(cfg, "lm", None)}.get(backend)
    weights = weights_fingerprint(model, cfg.adapter if backend == "self" else None)
    summary = run_job(records, generator.process, out=cfg.out, data=cfg.data,
                      fingerprint={**generator.fingerprint(), **weights}, chunk_size=4 * cfg.batch_size,
                      on_error=cfg.on_error, desc=desc, progress=not cfg.no_progress, rank=rank, world=world,
                      barrier=barrier, input_errors=input_errors, limit=cfg.limit)
    print(summary.line(desc))
    if getattr(generator, "passed_through", 0):
        print(f"note: {generator.passed_through} record(s) without images have no blind version; written unchanged, "
              "with no blind negative")
    return 0


def _weaken(cfg: WeakenConfig) -> int:
    from bpo.bootstrap.weaken import WeakenGenerator, parse_steps

    steps = parse_steps(cfg.steps)
    return run_generator(cfg, lambda device: WeakenGenerator(
        engine_from(cfg, device), settings_from(cfg), model=cfg.model, steps=steps, mode=cfg.mode,
        alpha=cfg.alpha, noise_target=cfg.noise_target, plausibility=cfg.plausibility), "bootstrap weaken")


def _answers(cfg: ImageGenerationOptions, blind: bool) -> int:
    from bpo.bootstrap.answers import AnswerGenerator

    return run_generator(cfg, lambda device: AnswerGenerator(
        engine_from(cfg, device), settings_from(cfg), model=cfg.model, blind=blind),
        f"bootstrap {'blind' if blind else 'self'}")


def _inject(cfg: InjectConfig) -> int:
    from bpo.bootstrap.inject import INJECT_BACKENDS, InjectGenerator, load_template

    template = load_template(cfg.template)
    settings = settings_from(cfg)
    if template.name == "few_shot" and "\nQuestion:" not in settings.stop:
        # A completion that starts the next few-shot block is over; stopping there saves tokens.
        settings.stop = settings.stop + ("\nQuestion:",)

    def build(device):
        backend = INJECT_BACKENDS.get(cfg.backend)(
            settings=settings, model=cfg.model, lm=cfg.lm, engine=cfg.engine, dtype=cfg.dtype,
            adapter=cfg.adapter, batch_size=cfg.batch_size, device=device)
        name = cfg.model if cfg.backend == "self" else (cfg.lm or "coco") if cfg.backend == "rules" else cfg.lm
        return InjectGenerator(backend, model=name, template=cfg.template, retries=cfg.retries)

    return run_generator(cfg, build, "bootstrap inject")


def _merge(cfg: MergeConfig) -> int:
    check_args(cfg, job=("out",))
    n, missing = merge_shards(cfg.data, cfg.out)
    extra = f"; {missing} input id(s) missing, see {errors_path(cfg.out)}" if missing else ""
    print(f"merged {n} row(s) -> {cfg.out}{extra}")
    return 0


# sub -> (config, run(cfg) -> exit code, one-line help)
TABLE = {
    "weaken": (WeakenConfig, _weaken, "answers to a diffusion-noised image (source: weakened)"),
    "inject": (InjectConfig, _inject, "the GT answer rewritten with plausible wrong details (source: injected)"),
    "self": (AnswerConfig, lambda cfg: _answers(cfg, blind=False),
             "the model's own answer to the clean image (source: self)"),
    "blind": (BlindConfig, lambda cfg: _answers(cfg, blind=True),
              "the answer to the same conversation without its image (source: blind)"),
    "merge": (MergeConfig, _merge, "merge OUT.shard-*.jsonl into OUT (input order, one row per id)"),
}
DESCRIPTION = "Generate negatives and append them to records."


_GROUP = CommandGroup(TABLE, prog="bpo bootstrap", description=DESCRIPTION)
main, check = _GROUP.main, _GROUP.check

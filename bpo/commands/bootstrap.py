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
Data-parallel: ``accelerate launch -m bpo bootstrap ...``; each rank writes OUT.shard-<rank>.jsonl
and rank 0 merges. A killed job is resumed by running the same command again.
"""

from __future__ import annotations

import argparse
import sys

from bpo.errors import BpoError

# Per-generator decoding defaults (see docs/bootstrap.md for why).
DEFAULTS = {
    "weaken": {"temperature": 1.0, "top_p": 0.9},  # y ~ p(. | noisy image), nucleus cuts the junk tail
    "self": {"temperature": 1.0, "top_p": 0.9},  # same decoding as weaken: the ablation differs only by noise
    "blind": {"temperature": 0.0, "top_p": 1.0},  # greedy, as Li et al.'s infer_json.py
    "inject": {"temperature": 0.8, "top_p": 0.95},  # the paper's error-injection sampling
}


def add_generation_args(p: argparse.ArgumentParser, *, temperature: float, top_p: float, max_new_tokens: int,
                        model_required: bool = True, image_root: bool = True) -> None:
    """Options shared by every engine-driven command (also used by ``bpo generate``)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=model_required, help="model directory or hub id (image-text-to-text)")
    g.add_argument("--adapter", help="peft adapter directory to apply to --model (e.g. <train output>/adapter)")
    g.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto (default: float32)")
    g.add_argument("--engine", default="hf", choices=("hf", "vllm"),
                   help="hf = transformers generate (default); vllm = optional, GPU only, untested in CI")
    io = p.add_argument_group("data")
    io.add_argument("--data", required=True, help="input records (JSONL)")
    if image_root:
        io.add_argument("--image-root", help="directory the records' image paths are relative to")
    io.add_argument("--out", required=True, help="output JSONL; shards OUT.shard-<rank>.jsonl make it resumable")
    io.add_argument("--on-error", default="skip", choices=("skip", "raise"),
                    help="bad record (missing/corrupt image, no answer): skip and count it (default) or stop")
    io.add_argument("--limit", type=int, help="only the first N records (quick trials)")
    d = p.add_argument_group("decoding")
    d.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)")
    d.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"longest answer in tokens (default: {max_new_tokens})")
    d.add_argument("--temperature", type=float, default=temperature,
                   help=f"0 = greedy (default: {temperature})")
    d.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling mass (default: {top_p})")
    d.add_argument("--seed", type=int, default=0,
                   help="answers depend only on (seed, record id), not on batch size or rank (default: 0)")
    d.add_argument("--stop", action="append", default=[], metavar="S",
                   help="stop string (repeatable); the answer is cut before it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from(args):
    from bpo.models.generation import SamplingSettings

    return SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, stop=tuple(args.stop))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpo bootstrap", description="Generate negatives and append them to records.")
    sub = p.add_subparsers(dest="generator", metavar="{weaken,inject,self,blind,merge}")
    sub.required = True

    w = sub.add_parser("weaken", help="answers to a diffusion-noised image (source: weakened)",
                       description="Image-weakened prompting: answer from the noised image (Pi et al.).")
    add_generation_args(w, **DEFAULTS["weaken"], max_new_tokens=64)
    n = w.add_argument_group("noise")
    n.add_argument("--steps", default="500", help="diffusion step(s) 0..999, comma-separated; one negative "
                                                  "per step (default: 500; t=900 keeps ~1/3 of the signal)")
    n.add_argument("--mode", default="sample", choices=("sample", "contrast"),
                   help="sample: answer from the noisy image alone (default); contrast: (1+alpha)*noisy - "
                        "alpha*clean logits, two KV caches")
    n.add_argument("--alpha", type=float, default=1.0, help="contrast strength (contrast mode; default: 1.0)")
    n.add_argument("--plausibility", type=float, default=0.1,
                   help="contrast mode: drop tokens with noisy prob < this x the top noisy prob (0 = off)")
    n.add_argument("--noise-target", default="pixels", choices=("pixels", "features"),
                   help="noise the normalised pixel_values (default, as the paper) or the projected image "
                        "embeddings, one row per image token as the language model reads them (verified on "
                        "LLaVA-1.5, LLaVA-NeXT anyres incl. newline rows, Qwen2-VL, Qwen2.5-VL, Gemma 3 pooled "
                        "tokens; any model whose projector is named multi_modal_projector, mm_projector or "
                        "visual.merger)")

    i = sub.add_parser("inject", help="the GT answer rewritten with plausible wrong details (source: injected)",
                       description="Error injection: a language model rewrites the chosen answer.")
    add_generation_args(i, **DEFAULTS["inject"], max_new_tokens=256, model_required=False, image_root=False)
    g = i.add_argument_group("injection")
    g.add_argument("--backend", default="self", choices=("self", "hf", "openai", "rules"),
                   help="self = --model's own language model, text only (default); hf = a local causal LM "
                        "(--lm); openai = an OpenAI-compatible endpoint (--lm model name; OPENAI_BASE_URL, "
                        "OPENAI_API_KEY from the environment); rules = offline object/count/colour/relation "
                        "edits (--lm VOCAB.json, COCO objects when omitted)")
    g.add_argument("--lm", help="causal LM path/id (backend hf), served model name (backend openai) or object "
                                "vocabulary JSON (backend rules)")
    g.add_argument("--template", default="zero_shot", choices=("zero_shot", "few_shot"),
                   help="zero_shot: rewrite a description (paper default); few_shot: question + answer with "
                        "one worked example per error type")
    g.add_argument("--retries", type=int, default=3,
                   help="extra attempts after an empty/identical/refusal/echo output (default: 3)")

    for name, blurb in (("self", "the model's own answer to the clean image (source: self)"),
                        ("blind", "the answer to the same conversation without its image (source: blind)")):
        s = sub.add_parser(name, help=blurb, description=blurb[0].upper() + blurb[1:] + ".")
        add_generation_args(s, **DEFAULTS[name], max_new_tokens=64)

    m = sub.add_parser("merge", help="merge OUT.shard-*.jsonl into OUT (input order, one row per id)")
    m.add_argument("--data", required=True, help="the input records (gives the order)")
    m.add_argument("--out", required=True, help="the --out of the job")
    return p


def run_generator(args, build, desc: str) -> int:
    """Load the input, build the generator (after the distributed context is known), run, report."""
    from bpo.jobs import dist_context, load_input, run_job
    from bpo.models.identity import weights_fingerprint

    rank, world, barrier, device = dist_context()
    records, input_errors = load_input(args.data, on_error=args.on_error, limit=args.limit)
    if not records and input_errors:
        # Nothing to do: say why before loading any model, and exit non-zero (not "wrote 0 records").
        raise BpoError(f"{args.data}: no usable records ({len(input_errors)} skipped; first: {input_errors[0]})")
    if input_errors and rank == 0:  # said now, not only after the model has loaded and the job has run
        print(f"skipping {len(input_errors)} bad record(s) of {args.data} (first: {input_errors[0]})", file=sys.stderr)
    generator = build(device)
    # The weights' content, not just their paths: other weights at the same path must not resume old negatives.
    backend = getattr(args, "backend", "self")  # only inject has backends; openai / rules have no local weights
    model = {"self": getattr(args, "model", None), "hf": getattr(args, "lm", None)}.get(backend)
    weights = weights_fingerprint(model, getattr(args, "adapter", None) if backend == "self" else None)
    summary = run_job(records, generator.process, out=args.out, data=args.data,
                      fingerprint={**generator.fingerprint(), **weights}, chunk_size=4 * args.batch_size,
                      on_error=args.on_error, desc=desc, progress=not args.no_progress, rank=rank, world=world, barrier=barrier,
                      input_errors=input_errors, limit=args.limit)
    print(summary.line(desc))
    if getattr(generator, "passed_through", 0):
        print(f"note: {generator.passed_through} record(s) without images have no blind version; written unchanged, "
              "with no blind negative")
    return 0


def engine_from_args(args, device):
    from bpo.models.engines import ENGINES

    return ENGINES.get(args.engine)(args.model, dtype=args.dtype, adapter=args.adapter,
                                    image_root=getattr(args, "image_root", None), batch_size=args.batch_size,
                                    device=device)


def _weaken(args) -> int:
    from bpo.bootstrap.weaken import WeakenGenerator, parse_steps

    steps = parse_steps(args.steps)  # fail on a bad --steps before loading the model
    if args.engine != "hf":
        raise BpoError("bootstrap weaken edits the model's inputs and needs --engine hf")
    return run_generator(args, lambda device: WeakenGenerator(
        engine_from_args(args, device), settings_from(args), model=args.model, steps=steps, mode=args.mode,
        alpha=args.alpha, noise_target=args.noise_target, plausibility=args.plausibility), "bootstrap weaken")


def _answers(args, blind: bool) -> int:
    from bpo.bootstrap.answers import AnswerGenerator

    return run_generator(args, lambda device: AnswerGenerator(
        engine_from_args(args, device), settings_from(args), model=args.model, blind=blind),
        f"bootstrap {'blind' if blind else 'self'}")


def _inject(args) -> int:
    from bpo.bootstrap.inject import INJECT_BACKENDS, InjectGenerator, load_template

    template = load_template(args.template)
    settings = settings_from(args)
    if template.name == "few_shot" and "\nQuestion:" not in settings.stop:
        # A completion that starts the next few-shot block is over; stopping there saves tokens.
        settings.stop = settings.stop + ("\nQuestion:",)

    def build(device):
        backend = INJECT_BACKENDS.get(args.backend)(
            settings=settings, model=args.model, lm=args.lm, engine=args.engine, dtype=args.dtype,
            adapter=args.adapter, batch_size=args.batch_size, device=device)
        name = args.model if args.backend == "self" else (args.lm or "coco") if args.backend == "rules" \
            else args.lm
        return InjectGenerator(backend, model=name, template=args.template, retries=args.retries)

    return run_generator(args, build, "bootstrap inject")


def _merge(args) -> int:
    from bpo.jobs import errors_path, merge_shards

    n, missing = merge_shards(args.data, args.out)
    extra = f"; {missing} input id(s) missing, see {errors_path(args.out)}" if missing else ""
    print(f"merged {n} row(s) -> {args.out}{extra}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bpo.safeguard import check_args

    check_args(args, job=("out",))  # before anything is opened for writing: --out may not be an input
    if args.generator == "merge":
        return _merge(args)
    if args.batch_size < 1:
        raise BpoError(f"--batch-size must be >= 1, not {args.batch_size}")
    if args.generator == "weaken":
        return _weaken(args)
    if args.generator == "inject":
        return _inject(args)
    return _answers(args, blind=args.generator == "blind")

"""``bpo analyze``: the papers' analysis figures as PNG + CSV (definitions in docs/analysis.md).

    bpo analyze curves RUN_DIR [RUN_DIR ...] --out DIR [--window 10] [--labels a,b]
    bpo analyze noise --model M [--adapter A] --image IMG --prompt "..." --targets bear,person
                      [--steps 0,100,...] [--prefix "..."] [--samples 4] --out DIR
    bpo analyze modality --records R.jsonl --out DIR [--judge refusal]
                      (--model M [--image-root DIR] | --text-responses T --multimodal-responses M
                       --blind-responses B) [--benign-images DIR | --swapped-responses S]
    bpo analyze scaling {MANIFEST.csv|.yaml | REPORT.json | RUN_DIR} ... --metric chair_i --out DIR

Every option is also a config key (``bpo analyze SUB --help-config``): ``--window 20`` == ``window=20`` ==
``window: 20`` in a YAML file given with ``--config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpo.analysis.curves import analyze_curves, summary_text
from bpo.analysis.modality import ModalityInputs, analyze_modality
from bpo.analysis.noise import ProbeItem, greedy_by_step, noise_curve, parse_steps, write_outputs
from bpo.analysis.plotting import parse_labels, unique_labels
from bpo.analysis.scaling import analyze_scaling
from bpo.config import CommandGroup, option
from bpo.data.images import load_image
from bpo.errors import BpoError
from bpo.eval.judges import JUDGES, build_judge, safety_judge_kwargs
from bpo.eval.judging import JudgeSection
from bpo.eval.report import format_table
from bpo.models.loading import load
from bpo.safeguard import check_args

EPILOG = """examples:
  bpo analyze curves runs/bpo runs/sft --labels BPO,SFT --window 20 --out figs/curves
  bpo analyze noise --model llava-hf/llava-1.5-7b-hf --image bear_horse.jpg --prompt "What is on the horse?" \\
      --targets bear,person --prefix "There is a" --out figs/noise
  bpo analyze modality --records mmsafe_test.jsonl --image-root images --model llava-hf/llava-1.5-7b-hf \\
      --benign-images benign/ --out figs/modality
  bpo analyze scaling manifest.csv --metric chair_i --out figs/scaling
"""
CONDITIONS = ("text", "multimodal", "blind")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(kw_only=True)
class CurvesConfig:
    runs: list[str] = option(help="`bpo train` output folders (or metrics.jsonl files)", positional="+",
                             metavar="RUN_DIR")
    out: str = option(help="output folder")
    window: int = option(10, help="optimizer steps per window")
    labels: str | None = option(None, help="comma-separated run labels, one per run (default: folder names)")

    def validate(self) -> None:
        if self.window < 1:
            raise BpoError(f"--window must be >= 1, not {self.window}")
        parse_labels(self.labels, len(self.runs), self.runs)  # one label per run, before any file is read


@dataclass(kw_only=True)
class ModelOptions:
    """The policy an analysis runs: a model and an optional adapter on top."""

    adapter: str | None = option(None, help="peft adapter folder (e.g. <run>/adapter) applied on top of --model")
    dtype: str = option("float32", help="weights dtype: float32, bfloat16, float16")
    device: str = option("auto", help="torch device (auto: cuda when available, else cpu)")


@dataclass(kw_only=True)
class NoiseConfig(ModelOptions):
    model: str = option(help="hub id or local path of an image-text-to-text model")
    image: str = option(help="image file")
    prompt: str = option(help="the question asked about the image")
    targets: str = option(help="comma-separated words, e.g. bear,person")
    steps: str = option("0,100,200,300,400,500,600,700,800,900,999",
                        help="noise steps in 0..999 (0 = clean), comma list or START:STOP:STEP")
    prefix: str = option("", help="text the answer starts with (the targets' next-token context)")
    samples: int = option(4, help="noise draws averaged per step")
    seed: int = option(0, help="first noise seed (draws use seed .. seed+samples-1)")
    max_new_tokens: int = option(64, help="length of the greedy answers")
    no_responses: bool = option(False, help="skip the greedy answers (Fig. 4 table)")
    batch_size: int = option(8, help="noised copies per forward pass")
    out: str = option(help="output folder")

    def target_words(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    def validate(self) -> None:
        if self.samples < 1:
            raise BpoError("--samples must be >= 1")
        if not self.target_words():
            raise BpoError("--targets needs at least one word, e.g. bear,person")
        parse_steps(self.steps)  # a bad --steps fails before the model loads


@dataclass
class ModalityJudge(JudgeSection):
    """The judge section of ``bpo eval safety``, with the rule-based refusal judge as the default kind."""

    kind: str | None = option("refusal", flag="--judge", metavar="KIND",
                              help="safety judge: refusal (rules), llm or hf (bpo.eval.judges.JUDGES)")


@dataclass(kw_only=True)
class ModalityConfig(ModelOptions):
    records: str = option(help="MMSafe-PO style records (images + meta.text_prompt)")
    out: str = option(help="output folder")
    image_root: str | None = option(None, help="folder the records' image paths are relative to")
    text_responses: str | None = option(None, help="pre-generated text answers {id, response}", metavar="JSONL")
    multimodal_responses: str | None = option(None, help="pre-generated multimodal answers {id, response}",
                                              metavar="JSONL")
    blind_responses: str | None = option(None, help="pre-generated blind answers {id, response}", metavar="JSONL")
    benign_images: str | None = option(None, help="folder of benign images, or a text file of paths under "
                                                  "--image-root")
    swapped_responses: str | None = option(None, help="pre-generated answers to the image-swapped records",
                                           metavar="JSONL")
    model: str | None = option(None, help="hub id or local path of an image-text-to-text model (generates the "
                                          "answers not given as files)")
    max_new_tokens: int = option(128, help="answer length when generating")
    batch_size: int = option(8, help="generation batch size")
    on_missing: str = option("error", help="a record without a response in a given file: stop or skip it",
                             choices=("error", "skip"))
    limit: int = option(0, help="use only the first N records (0 = all)")
    seed: int = option(0, help="seed of the benign-image choice")
    judge: ModalityJudge = field(default_factory=ModalityJudge,
                                 metadata={"help": "the safety judge of the co-defense probe"})

    def responses(self) -> dict[str, str | None]:
        return {c: getattr(self, f"{c}_responses") for c in CONDITIONS}

    def validate(self) -> None:
        lacking = [c for c, path in self.responses().items() if not path]
        if lacking and not self.model:
            flags = " ".join(f"--{c}-responses FILE" for c in lacking)
            raise BpoError(f"no responses for condition(s) {', '.join(lacking)}: pass {flags} (from `bpo generate`) "
                           "or --model M to generate them")
        if self.limit < 0:
            raise BpoError(f"--limit must be >= 0 (0 = all records), not {self.limit}")
        self.judge.check(JUDGES.names(), required=True)


@dataclass(kw_only=True)
class ScalingConfig:
    inputs: list[str] = option(help="manifest .csv/.yaml (method,run_dir,report[,pairs,label]), eval report .json "
                                    "files, or run folders", positional="+", metavar="INPUT")
    metric: str = option(help="report metric, dotted for nested ones (e.g. chair_i)")
    out: str = option(help="output folder")
    x: str = option("pairs", help="what to count on the x axis", choices=("pairs", "records"))
    rename: str = option("", help="method names for runs given without a manifest, by loss type: e.g. "
                                  "sigmoid=BPO,sft=SFT")
    logx: bool = option(False, help="log-scale x axis")

    def renames(self) -> dict[str, str]:
        out = {}
        for part in filter(None, (s.strip() for s in self.rename.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key or not value:
                raise BpoError(f"--rename {part!r}: use LOSS_TYPE=NAME pairs, e.g. sigmoid=BPO,sft=SFT")
            out[key] = value
        return out

    def validate(self) -> None:
        self.renames()


def _curves(args) -> int:
    labels = parse_labels(args.labels, len(args.runs), unique_labels(args.runs))
    res = analyze_curves(args.runs, args.out, window=args.window, labels=labels)
    print(f"change from the first to the last window of {args.window} steps:")
    print(summary_text(res["summary"], res["runs"]))
    print(f"wrote {len(res['files'])} files to {args.out} (curves.csv, {', '.join(res['figures'])} .png/.csv)")
    return 0


def _noise(args) -> int:
    from pathlib import Path

    steps = parse_steps(args.steps)
    targets = args.target_words()
    image_path = Path(args.image)
    image = load_image(image_path.parent, image_path.name)
    model, processor = load(args.model, adapter=args.adapter, dtype=args.dtype, device=_device(args.device))
    item = ProbeItem(image_path.stem, args.prompt, [image], args.prefix)
    seeds = list(range(args.seed, args.seed + args.samples))
    rows = noise_curve(model, processor, [item], targets, steps, seeds, batch_size=args.batch_size, progress=True)
    responses = None
    if not args.no_responses:
        responses = greedy_by_step(model, processor, [item], steps, seed=args.seed,
                                   max_new_tokens=args.max_new_tokens)
    config = {k: getattr(args, k) for k in ("model", "adapter", "image", "prompt", "prefix", "samples", "seed",
                                            "max_new_tokens")}
    config.update(targets=targets, steps=steps)
    res = write_outputs(args.out, rows, responses, config)
    _print_noise(rows, responses, targets)
    print(f"wrote {', '.join(p.name for p in res['files'])} to {args.out}")
    return 0


def _print_noise(rows, responses, targets) -> None:
    by_t: dict[int, dict] = {}
    for r in rows:
        by_t.setdefault(r["t"], {})[r["target"]] = r["prob_mean"]
    answers = {r["t"]: r["response"] for r in responses or []}
    headers = ["t", *[f"P({t})" for t in targets]] + (["greedy answer"] if responses else [])
    table = [[str(t), *[by_t[t].get(x) for x in targets]] + ([answers.get(t, "")[:60]] if responses else [])
             for t in sorted(by_t)]
    print(format_table(headers, table))


def _modality(args) -> int:
    responses = args.responses()
    inputs = ModalityInputs(args.records, responses, args.swapped_responses, args.benign_images, args.image_root,
                            args.seed, args.limit, args.on_missing)
    engine = settings = None
    needs_generation = not all(responses.values()) or (args.benign_images and not args.swapped_responses)
    if args.model and needs_generation:
        from bpo.models.generation import SamplingSettings, build_hf_engine

        engine = build_hf_engine(args.model, dtype=args.dtype, adapter=args.adapter, image_root=args.image_root,
                                 batch_size=args.batch_size, device=_device(args.device))
        # Greedy, as the Blind-PO authors generated their answers (infer_json.py, do_sample=False).
        settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0.0, seed=args.seed)
    judge = build_judge(args.judge.kind, **safety_judge_kwargs(args.judge))
    try:
        res = analyze_modality(inputs, args.out, judge, engine=engine, settings=settings)
    finally:
        judge.close()
    _print_modality(res["result"])
    print(f"wrote {', '.join(p.name for p in res['files'])} to {args.out}")
    return 0


def _print_modality(result: dict) -> None:
    co, ch, counts = result["co_defense"], result["cheating"], result["counts"]
    print(f"co-defense ({counts['used']} of {counts['records']} records; judge: {result['judge']['judge']}):")
    print(format_table(["condition", "safety_rate", "unknown_rate", "n"],
                       [[c, co[c]["safety_rate"], co[c]["unknown_rate"], co[c]["n"]]
                        for c in ("text", "multimodal", "blind")]))
    if "n_refused" in ch:
        print(f"cheating: {ch['kept']} of {ch['n_refused']} refusals kept after the benign swap "
              f"(kept_rate {_fmt(ch['kept_rate'])}, pass_rate {_fmt(ch['pass_rate'])})")
    else:
        print(f"cheating: {ch.get('status')}: {ch.get('reason')}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _scaling(args) -> int:
    res = analyze_scaling(args.inputs, args.out, metric=args.metric, x=args.x, rename=args.renames(),
                          logx=args.logx)
    print(format_table(["method", args.x, "n", args.metric, "std"],
                       [[p["method"], str(p["x"]), str(p["n"]), p["mean"], p["std"]] for p in res["points"]]))
    print(f"wrote scaling.csv, scaling_points.csv, scaling.png to {args.out}")
    return 0


def _guarded(run):
    """``run(cfg)`` after the output check: an output folder may not be an input file."""

    def guarded(cfg) -> int:
        check_args(cfg, outputs=(), output_dirs=("out",))
        return run(cfg)

    return guarded


TABLE = {
    "curves": (CurvesConfig, _guarded(_curves),
               "training curves of runs: log-probs, rewards, margins, accuracy per source (Bootstrapped-PO Fig. 6)"),
    "noise": (NoiseConfig, _guarded(_noise),
              "next-token probability of target words vs diffusion noise step (Bootstrapped-PO Figs. 4-5)"),
    "modality": (ModalityConfig, _guarded(_modality),
                 "Blind-PO co-defense and cheating probes: the same request as text / image+text / blind"),
    "scaling": (ScalingConfig, _guarded(_scaling),
                "metric vs number of preference pairs, one line per method (Bootstrapped-PO Fig. 7)"),
}
DESCRIPTION = "Analysis figures (PNG + CSV beside each).\n\n" + EPILOG


_GROUP = CommandGroup(TABLE, prog="bpo analyze", description=DESCRIPTION)
main, check = _GROUP.main, _GROUP.check

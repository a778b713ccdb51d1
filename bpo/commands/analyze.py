"""``bpo analyze``: the papers' analysis figures as PNG + CSV (definitions in docs/analysis.md).

    bpo analyze curves RUN_DIR [RUN_DIR ...] --out DIR [--window 10] [--labels a,b]
    bpo analyze noise --model M [--adapter A] --image IMG --prompt "..." --targets bear,person
                      [--steps 0,100,...] [--prefix "..."] [--samples 4] --out DIR
    bpo analyze modality --records R.jsonl --out DIR [--judge refusal]
                      (--model M [--image-root DIR] | --text-responses T --multimodal-responses M
                       --blind-responses B) [--benign-images DIR | --swapped-responses S]
    bpo analyze scaling {MANIFEST.csv|.yaml | REPORT.json | RUN_DIR} ... --metric chair_i --out DIR
"""

from __future__ import annotations

import argparse

from bpo.errors import BpoError

EPILOG = """examples:
  bpo analyze curves runs/bpo runs/sft --labels BPO,SFT --window 20 --out figs/curves
  bpo analyze noise --model llava-hf/llava-1.5-7b-hf --image bear_horse.jpg --prompt "What is on the horse?" \\
      --targets bear,person --prefix "There is a" --out figs/noise
  bpo analyze modality --records mmsafe_test.jsonl --image-root images --model llava-hf/llava-1.5-7b-hf \\
      --benign-images benign/ --out figs/modality
  bpo analyze scaling manifest.csv --metric chair_i --out figs/scaling
"""


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="hub id or local path of an image-text-to-text model")
    p.add_argument("--adapter", help="peft adapter folder (e.g. <run>/adapter) applied on top of --model")
    p.add_argument("--dtype", default="float32", help="weights dtype: float32, bfloat16, float16 (default: float32)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")


def _judge_args(p: argparse.ArgumentParser) -> None:
    from bpo.eval.judges import JUDGES

    p.add_argument("--judge", default="refusal", choices=JUDGES.names(),
                   help="safety judge of the co-defense probe (default: refusal)")
    p.add_argument("--judge-model", help="llm: served model name; hf: local model directory")
    p.add_argument("--base-url", help="llm: OpenAI-compatible base URL")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="llm: environment variable holding the key")
    p.add_argument("--judge-template", default="safety_judge_v1", help="judge template name or file")
    p.add_argument("--judge-workers", type=int, default=1, help="llm: concurrent requests")
    p.add_argument("--judge-device", default="cpu", help="hf: torch device of the judge")
    p.add_argument("--judge-cache", help="verdict cache JSONL (default: $BPO_HOME/judge/judgments.jsonl)")
    p.add_argument("--no-judge-cache", action="store_true", help="neither read nor write the verdict cache")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpo analyze", description="Analysis figures (PNG + CSV beside each).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="{curves,noise,modality,scaling}")
    sub.required = True

    c = sub.add_parser("curves", help="training curves of runs: log-probs, rewards, margins, accuracy per source",
                       description="Bootstrapped-PO Fig. 6: windowed mean +- std of metrics.jsonl, runs overlaid.")
    c.add_argument("runs", nargs="+", help="`bpo train` output folders (or metrics.jsonl files)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--window", type=int, default=10, help="optimizer steps per window (default: 10)")
    c.add_argument("--labels", help="comma-separated run labels, one per run (default: folder names)")

    n = sub.add_parser("noise", help="next-token probability of target words vs diffusion noise step",
                       description="Bootstrapped-PO Figs. 4-5: probabilities of target words and greedy answers "
                                   "as the image is noised.")
    _model_args(n, required=True)
    n.add_argument("--image", required=True, help="image file")
    n.add_argument("--prompt", required=True, help="the question asked about the image")
    n.add_argument("--targets", required=True, help="comma-separated words, e.g. bear,person")
    n.add_argument("--steps", default="0,100,200,300,400,500,600,700,800,900,999",
                   help="noise steps in 0..999 (0 = clean), comma list or START:STOP:STEP")
    n.add_argument("--prefix", default="", help="text the answer starts with (the targets' next-token context)")
    n.add_argument("--samples", type=int, default=4, help="noise draws averaged per step (default: 4)")
    n.add_argument("--seed", type=int, default=0, help="first noise seed (draws use seed .. seed+samples-1)")
    n.add_argument("--max-new-tokens", type=int, default=64, help="length of the greedy answers (default: 64)")
    n.add_argument("--no-responses", action="store_true", help="skip the greedy answers (Fig. 4 table)")
    n.add_argument("--batch-size", type=int, default=8, help="noised copies per forward pass")
    n.add_argument("--out", required=True, help="output folder")

    m = sub.add_parser("modality", help="Blind-PO co-defense and cheating probes",
                       description="Safety of the same request as text / image+text / blind, and whether "
                                   "refusals survive swapping the image for a benign one.")
    m.add_argument("--records", required=True, help="MMSafe-PO style records (images + meta.text_prompt)")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--image-root", help="folder the records' image paths are relative to")
    for cond in ("text", "multimodal", "blind"):
        m.add_argument(f"--{cond}-responses", metavar="JSONL", help=f"pre-generated {cond} answers {{id, response}}")
    m.add_argument("--benign-images", help="folder of benign images, or a text file of paths under --image-root")
    m.add_argument("--swapped-responses", metavar="JSONL", help="pre-generated answers to the image-swapped records")
    _model_args(m, required=False)
    m.add_argument("--max-new-tokens", type=int, default=128, help="answer length when generating (default: 128)")
    m.add_argument("--batch-size", type=int, default=8, help="generation batch size")
    m.add_argument("--seed", type=int, default=0, help="seed of the benign-image choice")
    m.add_argument("--limit", type=int, default=0, help="use only the first N records (0 = all)")
    m.add_argument("--on-missing", default="error", choices=("error", "skip"),
                   help="a record without a response in a given file: stop (default) or skip it")
    _judge_args(m)

    s = sub.add_parser("scaling", help="metric vs number of preference pairs, one line per method",
                       description="Bootstrapped-PO Fig. 7: eval reports paired with their training runs.")
    s.add_argument("inputs", nargs="+", help="manifest .csv/.yaml (method,run_dir,report[,pairs,label]), eval "
                                             "report .json files, or run folders")
    s.add_argument("--metric", required=True, help="report metric, dotted for nested ones (e.g. chair_i)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--x", default="pairs", choices=("pairs", "records"), help="what to count on the x axis")
    s.add_argument("--rename", default="", help="method names for runs given without a manifest, by loss type: "
                                                "e.g. sigmoid=BPO,sft=SFT")
    s.add_argument("--logx", action="store_true", help="log-scale x axis")
    return p


def _curves(args) -> int:
    from bpo.analysis.curves import analyze_curves, summary_text
    from bpo.analysis.plotting import parse_labels, unique_labels

    labels = parse_labels(args.labels, len(args.runs), unique_labels(args.runs))
    res = analyze_curves(args.runs, args.out, window=args.window, labels=labels)
    print(f"change from the first to the last window of {args.window} steps:")
    print(summary_text(res["summary"], res["runs"]))
    print(f"wrote {len(res['files'])} files to {args.out} (curves.csv, {', '.join(res['figures'])} .png/.csv)")
    return 0


def _noise(args) -> int:
    from pathlib import Path

    from bpo.analysis.noise import ProbeItem, greedy_by_step, noise_curve, parse_steps, write_outputs
    from bpo.data.images import load_image
    from bpo.models.loading import load

    if args.samples < 1:
        raise BpoError("--samples must be >= 1")
    steps = parse_steps(args.steps)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise BpoError("--targets needs at least one word, e.g. bear,person")
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
    from bpo.eval.report import format_table

    by_t: dict[int, dict] = {}
    for r in rows:
        by_t.setdefault(r["t"], {})[r["target"]] = r["prob_mean"]
    answers = {r["t"]: r["response"] for r in responses or []}
    headers = ["t", *[f"P({t})" for t in targets]] + (["greedy answer"] if responses else [])
    table = [[str(t), *[by_t[t].get(x) for x in targets]] + ([answers.get(t, "")[:60]] if responses else [])
             for t in sorted(by_t)]
    print(format_table(headers, table))


def _modality(args) -> int:
    from bpo.analysis.modality import ModalityInputs, analyze_modality
    from bpo.eval.judges import build_judge

    responses = {"text": args.text_responses, "multimodal": args.multimodal_responses,
                 "blind": args.blind_responses}
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
    judge = build_judge(args.judge, model=args.judge_model, base_url=args.base_url, api_key_env=args.api_key_env,
                        template=args.judge_template, workers=args.judge_workers, device=args.judge_device,
                        cache=args.judge_cache, use_cache=not args.no_judge_cache)
    try:
        res = analyze_modality(inputs, args.out, judge, engine=engine, settings=settings)
    finally:
        judge.close()
    _print_modality(res["result"])
    print(f"wrote {', '.join(p.name for p in res['files'])} to {args.out}")
    return 0


def _print_modality(result: dict) -> None:
    from bpo.eval.report import format_table

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
    from bpo.analysis.scaling import analyze_scaling
    from bpo.eval.report import format_table

    rename = {}
    for part in filter(None, (s.strip() for s in args.rename.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise BpoError(f"--rename {part!r}: use LOSS_TYPE=NAME pairs, e.g. sigmoid=BPO,sft=SFT")
        rename[key] = value
    res = analyze_scaling(args.inputs, args.out, metric=args.metric, x=args.x, rename=rename, logx=args.logx)
    print(format_table(["method", args.x, "n", args.metric, "std"],
                       [[p["method"], str(p["x"]), str(p["n"]), p["mean"], p["std"]] for p in res["points"]]))
    print(f"wrote scaling.csv, scaling_points.csv, scaling.png to {args.out}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bpo.safeguard import check_args

    check_args(args, outputs=(), output_dirs=("out",))  # an output folder may not be an input file
    return {"curves": _curves, "noise": _noise, "modality": _modality, "scaling": _scaling}[args.action](args)

"""Batched generation engine vs one-at-a-time ``model.generate``: tokens/s on the same model and prompts.

    .venv/bin/python bench/generate_throughput.py [--hidden 256] [--layers 4] [--batch-size 8]
        [--prompts 8] [--new-tokens 64] [--rounds 5] [--device cpu] [--threads 1] [--json]

Builds a tiny random LLaVA (CLIP vision + Llama, built locally by ``bpo.models.tiny``; hidden 256 and
4 layers by default: large enough that a forward pass is real matrix work, small enough for a
2-core CPU) and answers the same prompts (images of different sizes, prompts of different lengths)
twice per round, alternating:

* ``engine``: :class:`bpo.models.generation.HFEngine`, ``--batch-size`` prompts per left-padded
  batch, KV cache, greedy;
* ``single``: ``model.generate`` on each prompt alone (batch 1, the same encoded inputs), greedy.

Both are forced to produce exactly ``--new-tokens`` tokens per prompt (``min_new_tokens``), so the
work is identical; the greedy outputs are also compared (they must be equal). The ratio is computed
from the total tokens and total time of all rounds, so load from other processes hits both sides.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time


def build(hidden: int, layers: int, tmp: str, prompts: int, batch_size: int, device: str):
    from PIL import Image

    from bpo.data.records import Record, user_turn
    from bpo.models.generation import build_hf_engine
    from bpo.models.tiny import build_tiny_llava

    path = build_tiny_llava(f"{tmp}/model", hidden=hidden, layers=layers)
    records = []
    for i in range(prompts):
        Image.new("RGB", (32 + 7 * i, 24 + 5 * i), (20 * i, 100, 200 - 15 * i)).save(f"{tmp}/{i}.png")
        question = "Describe the image in detail." + " Mention the colours and the objects." * (i % 4)
        records.append(Record(id=f"p{i}", prompt=[user_turn(question, 1)], chosen="-", images=[f"{i}.png"]))
    engine = build_hf_engine(str(path), image_root=tmp, batch_size=batch_size, device=device)
    return engine, records


def run_engine(engine, records, settings):
    from bpo.models.generation import Request

    gens = engine.generate([Request(r.id, r) for r in records], settings)
    return [g.text for g in gens], sum(g.n_tokens for g in gens)


def run_single(engine, records, settings):
    """Plain ``model.generate``, one prompt at a time, on the engine's own encoding of each prompt."""
    import torch

    from bpo.models.generation import Request

    texts, tokens = [], 0
    for r in records:
        inputs = engine.collate([engine.encode_one(Request(r.id, r))])
        with torch.inference_mode():
            out = engine.model.generate(**inputs, max_new_tokens=settings.max_new_tokens,
                                        min_new_tokens=settings.min_new_tokens, do_sample=False,
                                        eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id)
        new = engine.strip_eos(out[0, inputs["input_ids"].shape[1]:].tolist())
        texts.append(engine.decode(new, settings))
        tokens += len(new)
    return texts, tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256, help="LM hidden size of the tiny LLaVA (default 256)")
    p.add_argument("--layers", type=int, default=4, help="LM layers (default 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64,
                   help="tokens per answer, forced for both paths (default 64 = bpo bootstrap's --max-new-tokens)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a small shared CPU, OpenMP threads spinning against "
                        "other processes make timings erratic; both paths get the same threads)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    import torch

    from bpo.models.generation import SamplingSettings

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    settings = SamplingSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        engine, records = build(args.hidden, args.layers, tmp, args.prompts, args.batch_size, args.device)
        run_engine(engine, records[:2], settings)  # warm-up (allocator, kernels) for both paths
        run_single(engine, records[:2], settings)
        # name -> [tokens, wall seconds, CPU seconds of this process]
        totals = {"engine": [0, 0.0, 0.0], "single": [0, 0.0, 0.0]}
        rounds, same = [], True
        for _ in range(args.rounds):
            row = {}
            for name, fn in (("engine", run_engine), ("single", run_single)):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                w0, c0 = time.perf_counter(), time.process_time()
                texts, tokens = fn(engine, records, settings)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                for i, v in enumerate((tokens, wall, cpu)):
                    totals[name][i] += v
                row[name] = {"wall_tok_s": tokens / wall, "cpu_tok_s": tokens / cpu}
                row[name + "_texts"] = texts
            same &= row.pop("engine_texts") == row.pop("single_texts")
            rounds.append(row)
    result = {"model": f"tiny LLaVA, LM hidden {args.hidden}, {args.layers} layers", "device": args.device,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "prompts": args.prompts, "batch_size": args.batch_size, "new_tokens": args.new_tokens,
              "rounds": rounds, "outputs_identical": same}
    for clock, idx in (("wall", 1), ("cpu", 2)):
        e, s = (totals[k][0] / totals[k][idx] for k in ("engine", "single"))
        result[clock] = {"engine_tok_s": e, "single_tok_s": s, "speedup": e / s}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result, args)
    return 0


def _print_table(result: dict, args) -> None:
    print(f"{result['model']}, {args.prompts} prompts x {args.new_tokens} new tokens, batch {args.batch_size}, "
          f"{result['threads']} torch thread(s) on {args.device}")
    print("| round | engine tok/s (wall) | single tok/s (wall) | ratio (wall) | ratio (process CPU time) |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(result["rounds"], 1):
        e, s = r["engine"], r["single"]
        print(f"| {i} | {e['wall_tok_s']:.0f} | {s['wall_tok_s']:.0f} | {e['wall_tok_s'] / s['wall_tok_s']:.2f}x "
              f"| {e['cpu_tok_s'] / s['cpu_tok_s']:.2f}x |")
    w, c = result["wall"], result["cpu"]
    print(f"| all | {w['engine_tok_s']:.0f} | {w['single_tok_s']:.0f} | **{w['speedup']:.2f}x** "
          f"| **{c['speedup']:.2f}x** |")
    print(f"greedy outputs identical: {result['outputs_identical']}")


if __name__ == "__main__":
    raise SystemExit(main())

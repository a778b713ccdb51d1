#!/usr/bin/env python
"""Peak memory of scoring response tokens: full ``[tokens, vocab]`` log-softmax vs bpo's chunked lm_head.

Not a test: one fresh process per mode (so the peak is that mode's own), forward + backward of the summed
log-probs of ``--tokens`` target tokens through an ``lm_head`` of ``--vocab`` x ``--hidden``:

- ``full``: ``log_softmax(lm_head(h).float())`` over all tokens at once, then gather (what a plain forward does
  with its logits);
- ``chunked``: :func:`bpo.models.packed.chunked_target_logps` (chunks of ~32 MiB fp32 logits, each recomputed
  in the backward pass).

Defaults: LLaVA-1.5-7B's head (vocab 32064 x 4096) and the 7b benchmark's K = 3 batch (8 examples x 4 responses
x ~90 tokens = 2,880 scored tokens). Peak: ``torch.cuda.max_memory_allocated`` on a GPU, ``ru_maxrss`` above
the process's baseline on a CPU (with a low glibc mmap threshold, so freed blocks leave RSS).

    python bench/logits_memory.py                   # CPU, fp32 head (~1 min)
    python bench/logits_memory.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, args) -> dict:
    import torch

    from bpo.models.packed import chunked_target_logps

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=args.device, dtype=dtype).requires_grad_(False)
    hidden = torch.randn(args.tokens, args.hidden, device=args.device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.tokens,), device=args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    if mode == "full":
        lp = head(hidden).float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    else:
        lp = chunked_target_logps(hidden, targets, head)
    lp.sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _rss_mib() - base
    return {"mode": mode, "peak_mib": peak, "value": float(lp.sum()), "grad_norm": float(hidden.grad.norm())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2880)
    p.add_argument("--vocab", type=int, default=32064)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--worker")
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return 0
    out = {}
    for mode in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--worker", mode] + [f"--{k}={getattr(args, k)}" for k in
                                                             ("tokens", "vocab", "hidden", "device", "dtype")]
        # glibc keeps freed blocks below its (growing, up to 32 MiB) mmap threshold in the heap, so RSS would
        # count memory already freed; a low fixed threshold returns every large block to the OS on free
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not line:
            sys.stderr.write(done.stderr[-3000:])
            return 1
        out[mode] = json.loads(line[-1][7:])
    full, chunked = out["full"], out["chunked"]
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"scored tokens {args.tokens}, vocab {args.vocab}, hidden {args.hidden}, {args.device} {args.dtype}; "
          f"one fp32 [tokens, vocab] tensor = {logits_mib:.0f} MiB")
    for r in (full, chunked):
        print(f"  {r['mode']:8s} peak {r['peak_mib']:8.0f} MiB above baseline   sum log p {r['value']:.4f}   "
              f"|grad| {r['grad_norm']:.6f}")
    print(f"  chunked / full peak: {chunked['peak_mib'] / max(full['peak_mib'], 1e-9):.2f}; values agree: "
          f"{abs(full['value'] - chunked['value']) <= 1e-3 * abs(full['value'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Packed vs plain-row log-probs on a GPU: values and gradients, every backend the CPU tests cannot cover.

The CPU tests (tests/models/test_packed.py) check SDPA and eager masks with gradients, and FlexAttention
values only (torch has no flex backward on CPU). This script runs on CUDA, fp32, the tiny hub-shaped families
(bpo.models.families): for each family plain rows vs the packed path (SDPA, one example per row); for the
LLaVA family also FlexAttention with all examples in one row (BlockMask, gradients included) and the packed
path through ``torch.compile`` (inductor). Values within 1e-5, gradients within 1e-4, like the CPU tests.
Exit status 1 if any check fails. Part of bench/gpu_check.sh (~1 min).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compare(plain, packed) -> tuple[float, float, bool]:
    lp_a, n_a, v_a, g_a = plain
    lp_b, n_b, v_b, g_b = packed
    names = set(g_a) | set(g_b)
    zero = lp_a.new_zeros(())
    dv = (lp_a - lp_b).abs().max().item()
    dg = max((g_a.get(n, zero) - g_b.get(n, zero)).abs().max().item() for n in names)
    same = bool(torch_equal(v_a, v_b) and torch_equal(n_a, n_b)) and bool(g_b)
    return dv, dg, same and dv <= 1e-5 and dg <= 1e-4


@contextlib.contextmanager
def _count_causal_sdpa():
    """Counts SDPA calls made with ``is_causal=True`` and no mask: the prompt half of the prefix split."""
    import torch

    real, count = torch.nn.functional.scaled_dot_product_attention, [0]

    def spy(*args, **kwargs):
        count[0] += bool(kwargs.get("is_causal")) and kwargs.get("attn_mask") is None
        return real(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield count
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a.cpu(), b.cpu())


def main() -> int:
    import torch

    from bpo.models.encoding import Encoder
    from bpo.models.families import build_tiny
    from bpo.models.loading import load
    from bpo.models.logprobs import example_logps, scatter_rows
    from bpo.models.packed import collate_packed, compile_model, packed_example_logps, packed_row_logps
    from tests.models.test_packed import _mixed, _records, _run, write_mixed_size_images

    dry = "--cpu-dry-run" in sys.argv  # the script's own logic on a CPU: SDPA only (no flex backward, no compile)
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        print("gpu_parity: no CUDA device (use --cpu-dry-run to check the script itself)")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: no TF32 rounding in either path
    torch.backends.cudnn.allow_tf32 = False
    work = Path(tempfile.mkdtemp())
    root = write_mixed_size_images(work)
    failed = []

    def check(label, plain, packed):
        dv, dg, ok = compare(plain, packed)
        print(f"  {label:44s} values {dv:.1e}  gradients {dg:.1e}  {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(label)

    for family in ("llava", "llava_next", "qwen2vl", "qwen25vl"):
        t = time.perf_counter()
        model, proc = load(str(build_tiny(family, work / family)))
        model = model.float().to(device).train()
        enc = Encoder(proc, root, max_length=4096)
        examples = _mixed([enc.encode(r) for r in _records(3)])
        pad = proc.tokenizer.pad_token_id
        plain = _run(example_logps, model, examples, pad)
        with _count_causal_sdpa() as causal:
            packed = _run(packed_example_logps, model, examples, pad)
        check(f"{family} packed (sdpa, split at the prompt: {causal[0]} causal calls)", plain, packed)
        if not causal[0]:  # the prefix split (bpo/models/prefix_attention.py) was not taken
            failed.append(f"{family}: no prefix split")
        if family in ("llava", "llava_next") and not dry:
            model.set_attn_implementation("flex_attention")

            def flex(m, e, p):
                batch = collate_packed(e, p, capacity=10_000, multiple_of=128)  # all in one row
                lp, n = packed_row_logps(m, batch)
                return scatter_rows(lp, n, batch, len(e))

            check(f"{family} packed (flex_attention, one row)", plain, _run(flex, model, examples, pad))
            model.set_attn_implementation("sdpa")
        if family == "llava" and not dry:
            compile_model(model, log=lambda *_: None)
            check("llava packed (sdpa, torch.compile inductor)", plain,
                  _run(packed_example_logps, model, examples, pad))
            torch._dynamo.reset()
        print(f"  ({family}: {time.perf_counter() - t:.0f} s)", flush=True)
    print("gpu_parity:", "all ok" if not failed else f"FAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

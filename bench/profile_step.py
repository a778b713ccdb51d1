#!/usr/bin/env python
"""Where a ``bpo train`` step's time goes: packed vs plain-rows log-probs, host vs device.

A diagnostic next to ``train_throughput.py`` (same fixtures, same trainer settings, reference forward every
step), run in one process per invocation. For each ``run.fast_path`` it reports, per optimizer step:

- wall and process-CPU seconds over ``--steps`` steps after ``--warmup`` (no profiler attached);
- under ``torch.profiler`` for ``--profile-steps`` more steps: the GPU's kernel time (sum of kernel
  durations), kernel launches, synchronising calls (``cudaStreamSynchronize`` / ``cudaDeviceSynchronize``,
  ``aten::_local_scalar_dense`` = ``.item()``), the aten operators dispatched, and per phase (policy and
  reference log-probs with the loss, the reference log-probs alone, backward, optimizer) the host and device time;
- on CUDA, with ``--sync-debug``, the Python lines that synchronise the host with the GPU in one step.

A step is host-bound when the GPU's kernel time is well below the wall time: the GPU waits for Python and
kernel launches, and making the matrix products smaller does not make the step shorter.

Usage::

    python bench/profile_step.py --size gpu --k 1 --sync-debug       # on a CUDA machine
    python bench/profile_step.py --size gpu --set hidden=64 vision_hidden=32 image_size=28 records=32 \\
        --work /tmp/prof_min --threads 1                             # CPU: the GPU size's layers, tiny widths

On a CPU the times are mostly compute, even at tiny widths; the operator and ``.item()`` counts are what
carry over to a GPU (each leaf operator is one or more kernel launches there, each ``.item()`` on a GPU
tensor a wait for the GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402  (bench/ is not a package)

PHASES = ("forward+loss", "reference", "backward", "optimizer")  # reference runs inside forward+loss


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_trainer(fx: dict, data: str, out: str, shape: dict, path: str, steps: int):
    from bpo.train.trainer import Trainer

    cfg = tt.bpo_config(fx, data, out, batch=shape["batch"], steps=steps, precision=shape["precision"],
                        extra=[f"run.fast_path={path}", "run.ref_cache='off'"])
    return Trainer(cfg, log=lambda *_: None).setup()


def step_fn(tr):
    """One optimizer step (grad_accum 1), its phases labelled for the profiler."""
    from torch.profiler import record_function

    from bpo.train.metrics import StepStats

    real_ref = tr._reference_logps

    def reference(examples):
        with record_function("bpo/reference"):
            return real_ref(examples)

    tr._reference_logps = reference

    def step(examples):
        with record_function("bpo/forward+loss"):
            loss = tr.micro_step(examples, StepStats())
        with record_function("bpo/backward"):
            tr.acc.backward(loss)
        with record_function("bpo/optimizer"):
            tr._optimizer_step()

    return step


def batches(tr, n: int) -> list:
    from bpo.train.data import epoch_batches

    cfg = tr.cfg
    order = epoch_batches(tr.lengths, cfg.run.batch_size, seed=cfg.run.seed, epoch=0,
                          group_by_length=cfg.data.group_by_length, world_size=1)
    return [[tr.examples[i] for i in order[j % len(order)]] for j in range(n)]


def profile_path(fx, data, work: Path, shape: dict, path: str, args) -> dict:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    total = args.warmup + args.steps + args.profile_steps + (1 if args.sync_debug else 0)
    tr = make_trainer(fx, data, str(work / "runs" / f"profile-{path}"), shape, path, total)
    step = step_fn(tr)
    todo = batches(tr, total)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = [], []
    for i in range(args.warmup + args.steps):
        _sync()
        t, c = time.perf_counter(), time.process_time()
        step(todo[i])
        _sync()
        if i >= args.warmup:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for i in range(args.profile_steps):
            step(todo[args.warmup + args.steps + i])
        _sync()
        prof_wall = time.perf_counter() - t
    if args.trace:
        Path(args.trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(args.trace) / f"trace-{path}.json"))
    n = args.profile_steps
    events = prof.events()
    avg = events.key_averages()
    gpu = [e for e in events if e.device_type != DeviceType.CPU and not e.is_user_annotation]
    by_name = {e.key: e for e in avg}
    launches = sum(e.count for e in avg if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    syncs = {k: by_name[k].count / n for k in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                "aten::_local_scalar_dense", "cudaMemcpyAsync") if k in by_name}
    aten = sum(e.count for e in avg if e.key.startswith("aten::"))
    phases = {}
    for e in events:  # the CPU-side range: its host time, and the time of the kernels launched inside it
        if e.name.startswith("bpo/") and e.device_type == DeviceType.CPU:
            ph = phases.setdefault(e.name[len("bpo/"):], {"host_ms": 0.0, "device_ms": 0.0})
            ph["host_ms"] += e.cpu_time_total / 1e3 / n
            ph["device_ms"] += (e.device_time_total if cuda else 0.0) / 1e3 / n
    top = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    sync_lines = sync_debug(step, todo[-1]) if args.sync_debug and cuda else {}
    out = {"path": path, "s_per_step": statistics.median(wall), "cpu_s_per_step": statistics.median(cpu),
           "wall_runs": wall, "profiled_wall_s_per_step": prof_wall / n,
           "gpu_time_ms_per_step": sum(e.device_time_total for e in gpu) / 1e3 / n,
           "gpu_events_per_step": len(gpu) / n, "kernel_launches_per_step": launches / n, "aten_ops_per_step": aten / n, "syncs_per_step": syncs,
           "phases": phases, "top_self_cpu_ms": {e.key: round(e.self_cpu_time_total / 1e3 / n, 3) for e in top},
           "sync_lines": sync_lines}
    if cuda:
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    del tr, step, todo, prof
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def sync_debug(step, examples) -> dict:
    """Python lines that made the host wait for the GPU during one step, with counts."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(examples)
            _sync()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    lines = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return dict(lines.most_common(15))


def report(r: dict) -> str:
    gpu = "peak_gpu_mib" in r
    busy = (f"GPU busy {r['gpu_time_ms_per_step']:.1f} ms/step in {r['gpu_events_per_step']:.0f} kernels/copies, "
            f"{r['kernel_launches_per_step']:.0f} kernel launches/step, ") if gpu else ""
    lines = [f"== {r['path']}: {r['s_per_step']:.4f} s/step wall, {r['cpu_s_per_step']:.4f} CPU-s/step "
             f"(runs {', '.join(f'{w:.4f}' for w in r['wall_runs'])})",
             f"   profiled ({r['profiled_wall_s_per_step']:.4f} s/step with the profiler on): {busy}"
             f"{r['aten_ops_per_step']:.0f} aten ops/step, syncs/step {json.dumps(r['syncs_per_step'])}"]
    if "peak_gpu_mib" in r:
        lines.append(f"   peak GPU memory {r['peak_gpu_mib']:.0f} MiB")
    for ph, v in r["phases"].items():
        # backward kernels are launched from autograd's own thread: in the total, not under this range
        dev = f", its kernels {v['device_ms']:.1f} ms" if gpu and ph != "backward" else ""
        label = "  reference" if ph == "reference" else ph  # nested in forward+loss
        lines.append(f"   {label:13s} host {v['host_ms']:.1f} ms{dev}")
    lines.append("   top self-CPU ops (ms/step): " + ", ".join(f"{k} {v}" for k, v in r["top_self_cpu_ms"].items()))
    if r["sync_lines"]:
        lines.append("   sync points (file:line x count): " + ", ".join(f"{k} x{v}" for k, v in r["sync_lines"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(tt.SIZES), default="gpu")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override fields of the size (hidden=64 layers=2 ...); use a separate --work")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--paths", nargs="+", default=["packed", "plain"], choices=["packed", "plain"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps without the profiler")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--sync-debug", action="store_true", help="CUDA: list the lines that synchronise, one step")
    p.add_argument("--threads", type=int)
    p.add_argument("--trace", help="directory for chrome traces (one per path)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--work", help="fixtures (default: the same as train_throughput.py for this size)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(tt.SIZES[args.size])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in shape:
            p.error(f"--set {item}: no such field in size {args.size!r}")
        shape[key] = int(value) if value.lstrip("-").isdigit() else value
    tt.SIZES[args.size] = shape  # prepare() and bpo_config() read it
    from bpo.paths import cache_dir

    work = Path(args.work) if args.work else cache_dir("bench") / f"train_throughput-{args.size}"
    fx = tt.prepare(work, args.size)
    data = tt.subset_k(fx["data"], args.k, work)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"profile_step: size {args.size} {shape}, K={args.k}, batch {shape['batch']}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results = []
    for path in args.paths:
        results.append(profile_path(fx, data, work, shape, path, args))
        print(report(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "shape": shape, "k": args.k, "device": device,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

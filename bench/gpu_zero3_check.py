"""ZeRO-3 on one GPU, world size 1: a LLaVA-shaped bf16 model trains, a killed run resumes, adapters reload.

A check, not a benchmark (it prints times but claims none). One GPU still runs ZeRO-3's partitioning code
(``zero.Init`` while loading, parameter gather/release hooks around every module, the 16-bit gather of the
final save), bf16 communication and the engine's sharded checkpoint format. Runs, each a fresh
``accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 1 --mixed_precision bf16``:

1. ``lora``: LoRA, 4 steps, checkpoint every 2 (the reference curve);
2. ``killed``: the same, every process killed (``os._exit``) inside step 3;
3. ``resumed``: the same command again: must resume from checkpoint-2 and reproduce steps 3-4 of ``lora``;
4. ``full``: full fine-tuning, 2 steps, ``run.ref_cache=off`` (the frozen reference is a second, eval-only
   ZeRO-3 engine scoring every step); the gathered model must reload with ``from_pretrained``.

Then the adapters of ``lora`` and ``resumed`` are reloaded with ``PeftModel.from_pretrained`` and must give the
same log-probs. Exit status 0 when every check passes; ``WORK/report.json`` has the numbers.

    python bench/gpu_zero3_check.py                      # GPU: hidden 2048 x 16 layers, 576 image tokens, bf16
    python bench/gpu_zero3_check.py --size cpu-smoke     # the same checks on a tiny fp32 model on the CPU

Status: the ``cpu-smoke`` size ran on a 2-core CPU box; the ``gpu`` size has not been run yet (no GPU was
available when it was written). Budget: about 5 minutes on one H100/H200 (model build ~1 min, 4 launches).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    # LLaVA-1.5's vision input (336 px / patch 14 = 576 image tokens), a 2048 x 16 Llama decoder.
    "gpu": dict(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=4, vision_heads=16, hidden=2048,
                intermediate=5504, layers=16, heads=16, kv_heads=16, max_positions=1024, records=32, batch=4,
                dtype="bfloat16", precision="bf16", tol=2e-3),
    "cpu-smoke": dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2, hidden=64,
                      intermediate=128, layers=2, heads=4, kv_heads=2, max_positions=512, records=16, batch=2,
                      dtype="float32", precision="fp32", tol=1e-5),
}


def build_fixtures(work: Path, size: dict) -> tuple[Path, Path, Path]:
    import numpy as np
    import torch
    from PIL import Image

    from bpo.models.tiny import build_tokenizer, make_llava

    model_dir, image_dir, data = work / "model", work / "images", work / "prefs.jsonl"
    if not (model_dir / "config.json").exists():
        dims = {k: size[k] for k in ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads",
                                     "hidden", "intermediate", "layers", "heads", "kv_heads", "max_positions")}
        model, processor = make_llava(build_tokenizer(["<image>"]), **dims)
        model.to(getattr(torch, size["dtype"])).save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(size["records"]):
        name = f"{i}.png"
        if not (image_dir / name).exists():
            pixels = rng.integers(0, 255, (size["image_size"], size["image_size"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / name)
        rows.append({"id": f"r{i}", "images": [name],
                     "prompt": [{"role": "user", "content": [{"type": "image"},
                                                             {"type": "text", "text": f"describe image {i}"}]}],
                     "chosen": f"a picture of noise number {i} with many colors",
                     "rejected": [{"text": f"a dog sitting on a red chair {i}", "source": "injected"},
                                  {"text": "a blue car", "source": "weakened"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, image_dir, data


def launch(out: Path, args: list[str], *, cpu: bool, die_at: int | None = None) -> tuple[int, float, str]:
    module = ["-m", "tests.train.dying_train", str(die_at)] if die_at else ["-m", "bpo", "train"]
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch", "--config_file", str(REPO / "configs/accelerate/zero3.yaml"), "--num_processes",
           "1", "--mixed_precision", "no" if cpu else "bf16", *module, *args, f"run.output_dir={out}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "4"))
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    (out.parent / f"{out.name}.log").write_text(proc.stdout + "\n" + proc.stderr)
    return proc.returncode, time.perf_counter() - t0, proc.stdout


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def adapter_logps(model_dir: Path, image_dir: Path, data: Path, adapter: Path, cpu: bool):
    import torch

    from bpo.data.records import read_records
    from bpo.models.encoding import Encoder
    from bpo.models.loading import load_model, load_processor
    from bpo.models.logprobs import example_logps

    proc = load_processor(str(model_dir))
    examples = [Encoder(proc, str(image_dir)).encode(r) for r in list(read_records(str(data)))[:4]]
    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    model = load_model(str(model_dir), dtype="bfloat16" if not cpu else "float32", adapter=str(adapter),
                       device=device)
    with torch.no_grad():
        return example_logps(model, examples, proc.tokenizer.pad_token_id)[0].float().cpu()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="gpu")
    p.add_argument("--work", default=None, help="fixtures and runs (default: $BPO_HOME/bench/gpu_zero3_check-SIZE)")
    a = p.parse_args()
    size, cpu = SIZES[a.size], a.size.startswith("cpu")
    from bpo.paths import cache_dir

    work = Path(a.work) if a.work else Path(cache_dir("bench")) / f"gpu_zero3_check-{a.size}"
    work.mkdir(parents=True, exist_ok=True)
    for old in ("lora", "killed", "full"):
        shutil.rmtree(work / old, ignore_errors=True)
    t0 = time.perf_counter()
    model_dir, image_dir, data = build_fixtures(work, size)
    report: dict = {"size": a.size, "fixture_s": round(time.perf_counter() - t0, 1), "checks": {}}
    base = [f"model.name={model_dir}", f"data.train={data}", f"data.image_root={image_dir}",
            f"model.dtype={size['dtype']}", f"run.precision={size['precision']}", f"run.batch_size={size['batch']}",
            "lora.r=16", "lora.alpha=32", "lora.dropout=0.0", "optim.lr=1e-3", "optim.warmup_steps=0",
            "run.max_steps=4", "run.save_every=2", "run.progress=false", "run.tensorboard=false",
            "data.group_by_length=false", "data.max_length=1024"]
    checks = report["checks"]
    rc, dt, _ = launch(work / "lora", base, cpu=cpu)
    report["lora_s"] = round(dt, 1)
    checks["lora runs"] = rc == 0
    rc, dt, _ = launch(work / "killed", base, cpu=cpu, die_at=3)
    checks["killed run left checkpoint-2 only"] = rc != 0 and sorted(
        x.name for x in (work / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    rc, dt, stdout = launch(work / "killed", base, cpu=cpu)
    report["resumed_s"] = round(dt, 1)
    checks["resumed from checkpoint-2"] = rc == 0 and "resumed from" in stdout
    if checks["lora runs"] and checks["resumed from checkpoint-2"]:
        la, lb = losses(work / "lora"), losses(work / "killed")
        report["losses"], report["resumed_losses"] = la, lb
        report["max_loss_diff"] = max(abs(x - y) for x, y in zip(la, lb))
        checks["resumed curve equals uninterrupted"] = len(la) == len(lb) == 4 and report["max_loss_diff"] <= size["tol"]
        pa = adapter_logps(model_dir, image_dir, data, work / "lora" / "adapter", cpu)
        pb = adapter_logps(model_dir, image_dir, data, work / "killed" / "adapter", cpu)
        report["max_adapter_logp_diff"] = float((pa - pb).abs().max())
        checks["adapters reload to the same log-probs"] = report["max_adapter_logp_diff"] <= 50 * size["tol"]
    full = [x for x in base if not x.startswith(("run.max_steps", "run.save_every"))]
    rc, dt, _ = launch(work / "full", [*full, "run.max_steps=2", "lora.enabled=false", "run.ref_cache=off"], cpu=cpu)
    report["full_s"] = round(dt, 1)
    checks["full fine-tuning with a ZeRO-3 reference runs"] = rc == 0 and (work / "full/model/config.json").exists()
    if checks["full fine-tuning with a ZeRO-3 reference runs"]:
        from bpo.models.loading import load_model

        load_model(str(work / "full" / "model"))  # the gathered 16-bit weights load with stock from_pretrained
    report["total_s"] = round(time.perf_counter() - t0, 1)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(json.dumps({k: v for k, v in report.items() if k != "checks"}))
    print(f"logs and report: {work}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Training throughput of ``bpo train`` vs TRL's ``DPOTrainer`` on one LLaVA-1.5-shaped model and data set.

Not a unit test: a benchmark that takes a few minutes. What it does, in one invocation:

1. builds (once, cached under ``--work``) a randomly initialised LLaVA (CLIP + Llama) shaped like
   LLaVA-1.5 in proportion (many image tokens per prompt, a short question, responses ~30 tokens),
   images, and preference records with 3 negatives each;
2. checks that both trainers compute the same loss at step 0 with a reference that differs from the
   policy (policy = base + a non-zero LoRA adapter, reference = base; same tokens);
3. for K = 1 and K = 3, runs each trainer in a fresh subprocess, alternating (bpo, TRL, bpo + ref
   cache, bpo plain path; repeated), and reports the medians of pairs/s, s/step and peak RSS (peak GPU
   memory on CUDA). A K-negative example counts K pairs; TRL gets the K pairs expanded to rows (its
   documented way) and a batch with the same number of pairs per step.

Usage::

    python bench/train_throughput.py                       # CPU size, prints the table
    python bench/train_throughput.py --write               # ... and updates BENCHMARKS.md
    python bench/train_throughput.py --size gpu --write    # larger model on a CUDA machine

Same settings on both sides: fp32 on CPU (bf16 autocast on GPU), LoRA r=16/alpha=32/dropout 0 on
every Linear of the language model, AdamW, constant LR, grad clipping 1.0, no gradient
checkpointing (TRL defaults to it: turned off here), no TRL precompute, same max_length.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    # 112 px / patch 8 -> 196 image tokens; ~25 prompt text tokens; responses 25-40 tokens.
    # One torch thread: the CPU box is shared, and 2 OpenMP threads on 2 oversubscribed cores made a
    # step 10x slower and erratic; CPU seconds per step are reported next to wall time for the same reason.
    "cpu": dict(image_size=112, patch_size=8, hidden=256, layers=4, vision_hidden=128, records=24, batch=4,
                steps=9, warmup=2, repeats=3, precision="fp32", threads=1),
    # LLaVA-1.5's own 336 px / patch 14 -> 576 image tokens, a 1024-wide 8-layer decoder.
    "gpu": dict(image_size=336, patch_size=14, hidden=1024, layers=8, vision_hidden=512, records=96, batch=8,
                steps=12, warmup=2, repeats=3, precision="bf16", threads=None),
    # The same data with a decoder big enough for the matrix products to dominate a step on an H100: 2048 x 16
    # (~0.67 B parameters; MLP width per the builder's default 2x), 16 heads of 128 like LLaVA-1.5-7B (the
    # builder's default 4 heads would make them 512 wide), a 1024-wide CLIP. TRL's K = 3 step holds ~4x the
    # activations of the GPU size's 12.7 GB; fewer records and steps keep a run within a few minutes.
    "gpu-large": dict(image_size=336, patch_size=14, hidden=2048, layers=16, vision_hidden=1024, heads=16,
                      kv_heads=16, records=64, batch=8, steps=8, warmup=2, repeats=1, precision="bf16",
                      threads=None),
    # LLaVA-1.5-7B's shape: CLIP-L/336 (24 layers, 1024 wide, 16 heads, MLP 4096; 576 image tokens), Llama
    # 4096 x 32 layers, 32 heads, MLP 11008, vocab 32064; LoRA r 64 on every linear of the language model (the
    # shipped recipe); responses of 60-120 tokens like LLaVA descriptions. Random weights initialised directly in
    # bf16 on the GPU (`random_init`: only config + processor on disk). TRL's 8 x K pair rows do not fit in one
    # forward at K = 3 (~200 GB of activations), so TRL gets 8 pairs per forward and K micro-batches of
    # gradient accumulation per step (`trl_accum`): the same 8 x K pairs per optimizer step.
    "7b": dict(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
               vision_intermediate=4096, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32,
               vocab_size=32064, records=32, batch=8, steps=5, warmup=2, repeats=1, precision="bf16",
               threads=None, words=(30, 60), lora_r=64, lora_alpha=16, random_init=True, trl_accum=True,
               check=False),
}
# Optional SIZES keys passed to bpo.models.tiny.make_llava when present (build_tiny_llava does not take them).
MODEL_EXTRAS = ("heads", "kv_heads", "intermediate", "vision_layers", "vision_heads", "vision_intermediate",
                "vocab_size")
LORA = dict(r=16, alpha=32)
MAX_LENGTH = 1024
BETA = 0.1
LR = 1e-4

_WORDS = ("a photo of a dog on a couch . the cat sits near the window . two people ride bicycles in the park . "
          "a red bus drives down the street next to a traffic light . there is a bowl of broccoli on the table . "
          "the image shows a man holding an umbrella in the rain . the person in the picture is smiling .").split()
_QUESTIONS = ["describe the image in detail .", "what is in the picture ?", "how many people are there ?",
              "is there a horse ? describe the image ."]


# ---- fixtures ------------------------------------------------------------------------------------------
def prepare(work: Path, size: str) -> dict:
    """Model, images, records (K = 3) and a non-zero LoRA adapter; built once per size."""
    shape = SIZES[size]
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        build_model(model_dir, shape)
    data = work / "prefs_k3.jsonl"
    if not data.exists():
        _write_data(work, shape)
    adapter = work / "adapter"
    if shape.get("check", True) and not (adapter / "adapter_config.json").exists():
        _write_adapter(model_dir, adapter, shape)
    return {"model": str(model_dir), "data": str(data), "images": str(work / "images"),
            "adapter": str(adapter)}


def build_model(model_dir: Path, shape: dict) -> None:
    """The random LLaVA of this size: ``build_tiny_llava``, or ``make_llava`` when the size sets heads etc.

    ``random_init`` sizes save the config and processor only; :func:`load_random` makes the weights."""
    from bpo.models.tiny import build_tiny_llava, build_tokenizer, make_llava

    dims = dict(image_size=shape["image_size"], patch_size=shape["patch_size"], hidden=shape["hidden"],
                layers=shape["layers"], vision_hidden=shape["vision_hidden"])
    extras = {key: shape[key] for key in MODEL_EXTRAS if key in shape}
    if not extras:
        build_tiny_llava(model_dir, **dims)
        return
    if shape.get("random_init"):
        config, processor = make_llava(build_tokenizer(["<image>"]), **dims, **extras, max_positions=4096,
                                       build=False)
        config.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        return
    model, processor = make_llava(build_tokenizer(["<image>"]), **dims, **extras)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)


def load_random(model_dir: str, dtype="bfloat16"):
    """A random LLaVA from ``model_dir``'s config, initialised in ``dtype`` directly on the GPU (seed 0, so
    every process gets the same weights); no weights on disk, no host round trip."""
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=getattr(torch, str(dtype)))
    return model.eval()


def _load_llava(fx: dict, shape: dict, dtype):
    """The benchmark's model for TRL: from disk, or random on the GPU for ``random_init`` sizes."""
    from transformers import LlavaForConditionalGeneration

    if shape.get("random_init"):
        return load_random(fx["model"], str(dtype).replace("torch.", ""))
    return LlavaForConditionalGeneration.from_pretrained(fx["model"], dtype=dtype)


def _patch_bpo_loader(shape: dict) -> None:
    """``random_init`` sizes: bpo's trainer gets the random GPU model instead of reading weights."""
    if not shape.get("random_init"):
        return
    from bpo.models import loading

    loading.load_model = lambda name, dtype=None, **kw: load_random(name, "bfloat16")


def _sentence(rng: random.Random, n_words: int) -> str:
    start = rng.randrange(len(_WORDS))
    return " ".join(_WORDS[(start + i) % len(_WORDS)] for i in range(n_words))


def _write_data(work: Path, shape: dict) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    words = shape.get("words", (12, 20))
    (work / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(shape["records"]):
        img = Image.new("RGB", (shape["image_size"] + 16, shape["image_size"]), tuple(rng.randrange(256)
                                                                                      for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.randrange(shape["image_size"]), rng.randrange(shape["image_size"])
            draw.rectangle([x, y, x + 20, y + 20], fill=tuple(rng.randrange(256) for _ in range(3)))
        img.save(work / "images" / f"{i}.png")
        prompt = [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": rng.choice(_QUESTIONS)}]}]
        rows.append({"id": f"b{i}", "images": [f"{i}.png"], "prompt": prompt,
                     "chosen": _sentence(rng, rng.randint(*words)),
                     "rejected": [{"text": _sentence(rng, rng.randint(*words)), "source": s}
                                  for s in ("weakened", "injected", "weakened")]})
    with open(work / "prefs_k3.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def _lora_targets(model) -> list[str]:
    from bpo.train.modeling import lora_target_modules

    return lora_target_modules(model, ["all-linear"])


def lora_of(shape: dict) -> dict:
    return {"r": shape.get("lora_r", LORA["r"]), "alpha": shape.get("lora_alpha", LORA["alpha"])}


def _write_adapter(model_dir: Path, out: Path, shape: dict) -> None:
    """A LoRA adapter with non-zero B, so policy (base + adapter) and reference (base) differ at step 0."""
    import torch
    from peft import LoraConfig, get_peft_model

    from bpo.models.loading import load_model

    model = load_model(str(model_dir))
    lora = lora_of(shape)
    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, bias="none",
                     target_modules=_lora_targets(model))
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(out)


def subset_k(data: str, k: int, work: Path) -> str:
    """The same records with their first ``k`` negatives."""
    out = work / f"prefs_k{k}.jsonl"
    if k != 3 and not out.exists():
        rows = [json.loads(line) for line in open(data)]
        for r in rows:
            r["rejected"] = r["rejected"][:k]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(out if k != 3 else data)


# ---- the two trainers ----------------------------------------------------------------------------------
def bpo_config(fx: dict, data: str, out: str, *, batch: int, steps: int, precision: str, extra=(), lora=None):
    from bpo.config import load_config
    from bpo.train.config import TrainConfig

    lora = lora or LORA
    return load_config(TrainConfig, None, [
        f"model.name={fx['model']}", f"data.train={data}", f"data.image_root={fx['images']}",
        f"data.max_length={MAX_LENGTH}", f"run.output_dir={out}", f"run.batch_size={batch}",
        f"run.max_steps={steps}", f"run.precision={precision}", "run.progress=false", "run.tensorboard=false",
        "run.resume=none", f"lora.r={lora['r']}", f"lora.alpha={lora['alpha']}", "lora.dropout=0.0",
        f"optim.lr={LR}", "optim.warmup_steps=0", "optim.scheduler=constant", f"loss.beta={BETA}", *extra])


def trl_rows(fx: dict, data: str, processor) -> list[dict]:
    """TRL's non-conversational vision format, rendered with the same template and end-of-turn token.

    The prompt is the exact string bpo renders; each completion is the text plus the template's
    end-of-turn token text, so both tokenise to the same ids (checked in ``check``).
    """
    from PIL import Image

    from bpo.data.records import read_records
    from bpo.models.encoding import end_of_turn_ids, render_prompt

    eot = processor.tokenizer.decode(end_of_turn_ids(processor))
    rows = []
    for rec in read_records(data):
        prompt = render_prompt(processor, rec.prompt)
        image = Image.open(os.path.join(fx["images"], rec.images[0])).convert("RGB")
        for neg in rec.rejected:  # K pairs -> K rows
            rows.append({"images": [image], "prompt": prompt, "chosen": rec.chosen + eot,
                         "rejected": neg.text + eot})
    return rows


def trl_trainer(fx: dict, data: str, out: str, *, batch_pairs: int, steps: int, precision: str,
                adapter: bool = False, callbacks=(), shape=None, grad_accum: int = 1):
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import DPOConfig, DPOTrainer

    from bpo.models.loading import load_processor

    shape = shape or {}
    processor = load_processor(fx["model"])
    rows = trl_rows(fx, data, processor)
    dataset = Dataset.from_list(rows)
    # bf16 runs: bf16 weights for TRL too (bpo stores its frozen weights in bf16 under run.precision=bf16)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = _load_llava(fx, shape, dtype)
    lora = lora_of(shape)
    args = DPOConfig(output_dir=out, per_device_train_batch_size=batch_pairs, max_steps=steps, learning_rate=LR,
                     gradient_accumulation_steps=grad_accum,
                     lr_scheduler_type="constant", warmup_steps=0, beta=BETA, max_length=MAX_LENGTH,
                     gradient_checkpointing=False, bf16=precision == "bf16", logging_steps=10_000,
                     save_strategy="no", report_to="none", disable_tqdm=True, seed=0, max_grad_norm=1.0,
                     dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    kwargs = {}
    if adapter:  # policy = base + adapter; reference = a separate base model (not a copy of the adapter)
        model = PeftModel.from_pretrained(model, fx["adapter"], is_trainable=True)
        kwargs["ref_model"] = _load_llava(fx, shape, dtype)
    else:
        kwargs["peft_config"] = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, bias="none",
                                           target_modules=_lora_targets(model))
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                      callbacks=list(callbacks), **kwargs), rows


# ---- worker processes ----------------------------------------------------------------------------------
def _now() -> tuple[float, float]:
    """(wall, CPU seconds of this process): CPU time is what a shared, loaded machine does not distort."""
    return time.perf_counter(), time.process_time()


def _threads(job: dict) -> None:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])


def _peak_memory_mib() -> dict:
    import resource

    import torch

    out = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class StepProfiler:
    """torch.profiler over one optimizer step (the one after step ``at``): aten ops and kernel launches.

    The step it records is not among the timed ones (the profiler slows a step down). Each leaf aten op is one
    or more kernel launches on a GPU, so on a CPU the op count is what carries over; on CUDA the launches
    (``cudaLaunchKernel`` / ``cuLaunchKernel``) are counted too.
    """

    def __init__(self, at: int):
        self.at, self.prof, self.counts = at, None, {}

    def after_step(self, done: int) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if done == self.at:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.prof = profile(activities=acts)
            self.prof.__enter__()
        elif done == self.at + 1 and self.prof is not None:
            self.prof.__exit__(None, None, None)
            avg = self.prof.key_averages()
            self.counts = {"aten_ops": sum(e.count for e in avg if e.key.startswith("aten::")),
                           "kernel_launches": sum(e.count for e in avg
                                                  if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))}
            self.prof = None

    def result(self) -> dict:
        return dict(self.counts)


def model_work(tr) -> dict:
    """What the FLOP count needs: parameter counts and the data's token counts (per example, averaged)."""
    from bpo.models.packed import hf_model
    from bpo.train.modeling import language_model_prefix, vision_prefix

    base = hf_model(tr.policy)
    lm, vis = language_model_prefix(base), vision_prefix(base)
    named = dict(base.named_parameters())
    n_lm = sum(p.numel() for n, p in named.items() if n.startswith(lm + ".") and "embed_tokens" not in n
               and "lora_" not in n)
    n_vis = sum(p.numel() for n, p in named.items() if vis and n.startswith(vis + "."))
    head = base.get_output_embeddings().weight
    # the last layer's o_proj + MLP, which the packed path runs only on the rows it reads (_LastLayerRows)
    last = base.get_decoder().layers[-1]
    n_last = sum(p.numel() for m in (last.self_attn.o_proj, last.mlp) for n, p in m.named_parameters()
                 if "lora_" not in n)
    exs = tr.examples
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"n_lm": n_lm, "n_vis": n_vis, "n_head": head.numel(), "n_last": n_last,
            "image_tokens": mean([ex.n_image_tokens for ex in exs]),
            "prompt": mean([len(ex.prompt_ids) for ex in exs]),
            "responses": [mean([len(ex.response_ids[k]) for ex in exs]) for k in range(4)
                          if all(len(ex.response_ids) > k for ex in exs)]}


def worker_bpo(job: dict) -> dict:
    import torch

    _threads(job)

    from bpo.train import ref_cache
    from bpo.train.trainer import Trainer

    fx, shape = job["fx"], shape_of(job)
    _patch_bpo_loader(shape)
    extra = [f"run.fast_path={job['fast_path']}", f"run.ref_cache='{job['ref_cache']}'", *job.get("extra", [])]
    cfg = bpo_config(fx, job["data"], job["out"], batch=shape["batch"], steps=shape["steps"] + 1,
                     precision=shape["precision"], extra=extra, lora=lora_of(shape))
    stamps: list[float] = []
    real_step = Trainer._optimizer_step
    prof = StepProfiler(at=shape["steps"])  # the step after the timed ones, under torch.profiler

    def timed_step(self):
        value = real_step(self)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(_now())
        prof.after_step(len(stamps) - 1)
        return value

    Trainer._optimizer_step = timed_step
    prepass = {"s": 0.0}
    real_build = ref_cache.build_reference_cache

    def timed_build(*args, **kwargs):  # the pre-pass (bpo.train.reference calls it through the module)
        t = time.perf_counter()
        cache = real_build(*args, **kwargs)
        prepass["s"] = time.perf_counter() - t
        prepass["computed"] = cache.computed
        return cache

    ref_cache.build_reference_cache = timed_build
    t0 = time.perf_counter()
    tr = Trainer(cfg, log=lambda *_: None).setup()
    setup_s = time.perf_counter() - t0
    stamps.append(_now())
    tr.train()
    return {"stamps": stamps[1:-1], "start": stamps[0], "setup_s": setup_s, "prepass_s": prepass["s"],
            "prepass_computed": prepass.get("computed", 0), **_peak_memory_mib(), **prof.result(),
            "work": model_work(tr)}


def worker_trl(job: dict) -> dict:
    import torch

    _threads(job)
    from transformers import TrainerCallback

    fx, shape = job["fx"], shape_of(job)
    stamps: list[float] = []

    prof = StepProfiler(at=shape["steps"])

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(_now())

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(_now())
            prof.after_step(len(stamps) - 1)

    t0 = time.perf_counter()
    accum = job["k"] if shape.get("trl_accum") else 1
    trainer, _ = trl_trainer(fx, job["data"], job["out"], batch_pairs=shape["batch"] * job["k"] // accum,
                             steps=shape["steps"] + 1, precision=shape["precision"], callbacks=[Stamp()],
                             shape=shape, grad_accum=accum)
    setup_s = time.perf_counter() - t0
    trainer.train()
    return {"stamps": stamps[1:-1], "start": stamps[0], "setup_s": setup_s, **_peak_memory_mib(), **prof.result()}


def worker_check(job: dict) -> dict:
    """Step-0 loss of both trainers on the same first batch, policy = base + adapter, reference = base."""
    import torch

    _threads(job)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from bpo.train.metrics import StepStats
    from bpo.train.trainer import Trainer

    fx, k = job["fx"], job["k"]
    torch.manual_seed(0)
    n_ex = 2
    extra = ["run.ref_cache='off'", "loss.reduction=mean"]  # mean over K = TRL's mean over K rows
    tr = Trainer(bpo_config(fx, job["data"], job["out"] + "-bpo", batch=n_ex, steps=1, precision="fp32",
                            extra=extra), log=lambda *_: None).setup()
    weights = load_file(os.path.join(fx["adapter"], "adapter_model.safetensors"))
    result = set_peft_model_state_dict(tr.policy, weights)
    assert not [m for m in result.unexpected_keys if "lora" in m], result.unexpected_keys
    examples = tr.examples[:n_ex]
    bpo_loss = float(tr.micro_step(examples, StepStats()))

    trainer, rows = trl_trainer(fx, job["data"], job["out"] + "-trl", batch_pairs=n_ex * k, steps=1,
                                precision="fp32", adapter=True)
    batch = trainer.data_collator([dict(r) for r in rows[: n_ex * k]])
    # same tokens: every TRL row (prompt + completion, padding removed) is a bpo row
    bpo_rows = {tuple(ex.prompt_ids + resp) for ex in examples for resp in ex.response_ids}
    trl_seqs = {tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])}
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)))
    # real (unpadded) tokens the language model sees per pass over the whole data set
    shared = sum(len(ex.prompt_ids) + sum(map(len, ex.response_ids)) for ex in tr.examples)
    trl_tokens = sum(2 * len(ex.prompt_ids) + len(ex.response_ids[0]) + len(r)
                     for ex in tr.examples for r in ex.response_ids[1:])
    return {"bpo_loss": bpo_loss, "trl_loss": trl_loss, "same_tokens": trl_seqs <= bpo_rows,
            "n_rows": len(trl_seqs), "token_ratio": trl_tokens / shared}


WORKERS = {"bpo": worker_bpo, "trl": worker_trl, "check": worker_check}


def shape_of(job: dict) -> dict:
    """The size's settings, with the driver's ``--set`` overrides (workers are fresh interpreters)."""
    return {**SIZES[job["size"]], **job.get("set", {})}


def run_worker(job: dict, env: dict) -> dict:
    """One measured run in a fresh interpreter, so ru_maxrss is this run's own peak."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"worker failed: {job['kind']} K={job.get('k')}")
    return json.loads(lines[-1][len("RESULT "):])


# ---- driver -------------------------------------------------------------------------------------------
VARIANTS = [  # (label, kind, fast_path, ref_cache)
    ("bpo", "bpo", "auto", "off"),
    ("TRL DPOTrainer", "trl", None, None),
    ("bpo + ref cache", "bpo", "auto", "auto"),
    ("bpo plain rows", "bpo", "plain", "off"),
]
OPTIONAL_VARIANTS = [  # selected by name with --variants; the last field: extra bpo config overrides
    ("bpo flex", "bpo", "packed", "off", ["model.attn_implementation=flex_attention"]),
    ("bpo compiled", "bpo", "auto", "off", ["run.compile=true"]),
]


def step_times(run: dict, warmup: int, which: int) -> list[float]:
    """Per-step durations (which = 0: wall, 1: CPU seconds) after ``warmup`` steps."""
    stamps = [run["start"]] + run["stamps"]
    return [b[which] - a[which] for a, b in zip(stamps, stamps[1:])][warmup:]


def summarise(runs: list[dict], warmup: int) -> dict:
    wall = [statistics.median(step_times(r, warmup, 0)) for r in runs]
    cpu = [statistics.median(step_times(r, warmup, 1)) for r in runs]
    mem = "gpu_mib" if "gpu_mib" in runs[0] else "rss_mib"
    return {"s_per_step": statistics.median(wall), "cpu_per_step": statistics.median(cpu), "runs": wall,
            "cpu_runs": cpu,
            "peak_mib": statistics.median(r[mem] for r in runs), "mem_kind": mem,
            "setup_s": statistics.median(r["setup_s"] for r in runs),
            "prepass_s": max(r.get("prepass_s", 0.0) for r in runs),
            "aten_ops": _median_of(runs, "aten_ops"), "kernel_launches": _median_of(runs, "kernel_launches"),
            "work": next((r["work"] for r in runs if "work" in r), None)}


def _median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


# bf16 dense peak (no sparsity) of the chips we may be lent, FLOP/s
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def step_flops(label: str, work: dict, k: int, batch: int) -> float:
    """Matrix FLOPs of one optimizer step of ``label`` on its own tokens (what its layout makes it compute).

    Language model: 2 x params x tokens per forward; the policy pass is forward + the backward's
    activation gradients (LoRA: the frozen weights get no weight gradient), so 4x, and the reference
    forward 2x more unless cached; the packed path's last layer runs o_proj and the MLP on the read rows only. Vision tower (frozen): 2x per forward per image token. lm_head: on
    the scored (response) tokens only, for every trainer (what the loss uses). Left out: attention
    scores and LoRA's own small products, so MFU is slightly understated.
    """
    p, r, img = work["prompt"], work["responses"][: k + 1], work["image_tokens"]
    ref = 0 if "ref cache" in label else 1
    skipped = 0  # last-layer o_proj + MLP rows not computed
    if label.startswith("TRL"):  # one row per pair: prompt + chosen and prompt + rejected, image in each
        lm = batch * sum(2 * p + r[0] + r[j] for j in range(1, k + 1))
        scored, images = batch * sum(r[0] + r[j] for j in range(1, k + 1)), 2 * batch * k
    elif "plain" in label:
        lm, scored, images = batch * sum(p + x for x in r), batch * sum(r), batch * (k + 1)
    else:  # packed: the prompt once, every response once
        lm, scored, images = batch * (p + sum(r)), batch * sum(r), batch
        # the rows that predict nothing: p - 1 prompt rows and each of the k + 1 responses' last token
        skipped = batch * (p + k) * work.get("n_last", 0)
    lm_passes, vis_passes = 4 + 2 * ref, 2 + 2 * ref
    return (lm_passes * (work["n_lm"] * lm - skipped + work["n_head"] * scored)
            + vis_passes * work["n_vis"] * img * images)


def chip_peak() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "CPU", None
    name = torch.cuda.get_device_name(0)
    return name, next((v for key, v in PEAK_BF16.items() if key in name), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3])
    p.add_argument("--repeats", type=int, help="alternating repeats per variant (default: per size)")
    p.add_argument("--variants", nargs="+", help="subset of: " + ", ".join(v[0] for v in VARIANTS))
    p.add_argument("--threads", type=int, help="torch threads per run (default: 1 on the CPU size)")
    p.add_argument("--work", help="where the model, data and runs go (default: BPO_HOME/bench/...)")
    p.add_argument("--write", action="store_true", help="update the '## Training throughput' section of "
                                                        "BENCHMARKS.md")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override fields of the size (hidden=64 layers=2 ...); use a separate --work")
    p.add_argument("--no-check", action="store_true", help="skip the step-0 loss check (the 7b size skips it: "
                                                            "three fp32 7B models per process)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[job["kind"]](job)), flush=True)
        return 0

    from bpo.paths import cache_dir

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SIZES[args.size]:
            p.error(f"--set {item}: no such field in size {args.size!r}")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    SIZES[args.size] = shape = {**SIZES[args.size], **overrides}
    work = Path(args.work) if args.work else cache_dir("bench") / f"train_throughput-{args.size}"
    fx = prepare(work, args.size)
    env = dict(os.environ, BPO_HOME=str(work / "home"), TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    import shutil

    shutil.rmtree(work / "home" / "ref_logps", ignore_errors=True)  # the first cached run pays the pre-pass
    known = VARIANTS + OPTIONAL_VARIANTS
    unknown = set(args.variants or []) - {v[0] for v in known}
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(v[0] for v in known)}")
    variants = [v for v in known if v[0] in args.variants] if args.variants else list(VARIANTS)
    repeats = args.repeats or shape["repeats"]
    threads = args.threads or shape["threads"]
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    checks, results = {}, {}
    for k in args.k:
        data = subset_k(fx["data"], k, work)
        if shape.get("check", True) and not args.no_check:
            checks[k] = run_worker({"kind": "check", "fx": fx, "size": args.size, "k": k, "data": data,
                                    "out": str(work / "runs" / f"check-k{k}"), "threads": threads, "set": overrides},
                                   env)
            print(f"K={k} step-0 loss: bpo {checks[k]['bpo_loss']:.6f}  TRL {checks[k]['trl_loss']:.6f}  "
                  f"same tokens: {checks[k]['same_tokens']}", flush=True)
        runs: dict[str, list] = {v[0]: [] for v in variants}
        for rep in range(repeats):
            for label, kind, fast, cache, *more in variants:
                job = {"kind": kind, "fx": fx, "size": args.size, "k": k, "data": data, "fast_path": fast,
                       "ref_cache": cache, "out": str(work / "runs" / f"{kind}-k{k}-{rep}"), "threads": threads,
                       "extra": more[0] if more else [], "set": overrides}
                r = run_worker(job, env)
                runs[label].append(r)
                print(f"  K={k} rep {rep} {label}: {statistics.median(step_times(r, shape['warmup'], 0)):.3f} "
                      f"s/step, {statistics.median(step_times(r, shape['warmup'], 1)):.3f} CPU-s/step", flush=True)
        results[k] = {label: summarise(rs, shape["warmup"]) for label, rs in runs.items()}
    table = format_table(results, shape)
    total = time.perf_counter() - t_start
    text = format_section(table, checks, results, shape, args, total, (load0, os.getloadavg()[0]))
    print(text)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", text)
    return 0 if all(check_ok(c) for c in checks.values()) else 1


def format_table(results: dict, shape: dict) -> str:
    _, peak = chip_peak()
    flops_head = "MFU" if peak else "TFLOP/s"
    lines = ["| K | trainer | pairs/step | s/step | pairs/s | vs TRL | CPU s/step | vs TRL (CPU) | "
             f"peak memory MiB | vs TRL | aten ops/step | kernel launches/step | {flops_head} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, by_label in results.items():
        trl = by_label.get("TRL DPOTrainer")
        work = next((s["work"] for s in by_label.values() if s.get("work")), None)
        for label, s in by_label.items():
            pairs = shape["batch"] * k
            rate = pairs / s["s_per_step"]
            ratio = f"{trl['s_per_step'] / s['s_per_step']:.2f}x" if trl else "-"
            cpu_ratio = f"{trl['cpu_per_step'] / s['cpu_per_step']:.2f}x" if trl else "-"
            mem_ratio = f"{s['peak_mib'] / trl['peak_mib']:.2f}x" if trl else "-"
            kind = "GPU" if s["mem_kind"] == "gpu_mib" else "RSS"
            ops = f"{s['aten_ops']:,.0f}" if s.get("aten_ops") else "-"
            launches = f"{s['kernel_launches']:,.0f}" if s.get("kernel_launches") else "-"
            achieved = step_flops(label, work, k, shape["batch"]) / s["s_per_step"] if work else None
            fl = "-" if achieved is None else (f"{100 * achieved / peak:.1f} %" if peak else f"{achieved / 1e12:.3f}")
            lines.append(f"| {k} | {label} | {pairs} | {s['s_per_step']:.3f} | {rate:.1f} | {ratio} | "
                         f"{s['cpu_per_step']:.3f} | {cpu_ratio} | {s['peak_mib']:.0f} ({kind}) | {mem_ratio} | "
                         f"{ops} | {launches} | {fl} |")
    return "\n".join(lines)


LEGEND = {
    "bpo": "- *bpo*: prompt and all responses packed in one forward (`run.fast_path=auto`), a reference "
           "forward every step (`run.ref_cache=off`); the image features are computed once per step and used by "
           "both passes (`bpo/models/vision_share.py`).",
    "bpo flex": "- *bpo flex*: the same with `model.attn_implementation=flex_attention` (all examples of a "
                "batch in one row, document mask, no padding between them).",
    "bpo compiled": "- *bpo compiled*: *bpo* with `run.compile=true`.",
    "bpo + ref cache": "- *bpo + ref cache*: the same with `run.ref_cache=auto`; its one-off pre-pass ({prepass}) "
                       "runs in setup,\n  before the timed steps, and is reused by every later run on the same "
                       "model and data.",
    "bpo plain rows": "- *bpo plain rows*: `run.fast_path=plain`, one row per response as in TRL: bpo without "
                      "packing.",
}


def token_ratios(results: dict) -> str:
    """TRL's real tokens per step over the packed path's, from the data's token counts (no check run)."""
    out = []
    for k, r in results.items():
        work = next((s["work"] for s in r.values() if s.get("work")), None)
        if work:
            p, resp = work["prompt"], work["responses"][: k + 1]
            trl = sum(2 * p + resp[0] + resp[j] for j in range(1, k + 1))
            out.append(f"K={k}: {trl / (p + sum(resp)):.2f}x")
    return "; ".join(out)


def check_ok(c: dict) -> bool:
    return abs(c["bpo_loss"] - c["trl_loss"]) <= 1e-4 and c["same_tokens"]


# The targets per size, as ratios in the same run. vs_trl: bpo pairs/s over TRL's per K; cache_vs_trl:
# bpo + ref cache over TRL; cache_on_top: bpo + ref cache over bpo; mem: peak memory bpo / TRL at most, per K;
# ops_vs_plain: the packed path's aten ops per step over plain rows' at most; packed_vs_plain: plain rows'
# s/step over the packed path's at least (no slower); mfu: what the bpo step should reach.
TARGETS = {
    "cpu": {"vs_trl": {1: 2.0, 3: 5.0}, "cache_on_top": 1.3, "mem": {1: 1.0, 3: 1.0}, "ops_vs_plain": 1.1},
    "gpu": {"vs_trl": {1: 1.8, 3: 3.0}, "cache_on_top": 1.3, "mem": {1: 1.0, 3: 1.0}, "packed_vs_plain": 1.0},
    "gpu-large": {"vs_trl": {1: 1.8, 3: 3.0}, "cache_on_top": 1.3, "mem": {1: 1.0, 3: 1.0}},
    "7b": {"vs_trl": {1: 1.6, 3: 3.5}, "cache_vs_trl": {1: 2.2}, "mem": {3: 0.5}, "mfu": 0.35},
}


def target_lines(results: dict, size: str = "cpu", shape: dict | None = None) -> list[str]:
    """The issue's targets, with the measured ratio (wall / CPU time) and whether it is met."""
    out, goals = [], TARGETS.get(size, TARGETS["cpu"])

    def ratio(k, num, den, key):
        r = results.get(k, {})
        return r[den][key] / r[num][key] if num in r and den in r else None

    def spread(k, num, den):
        # runs alternate, so repeat i of one variant ran next to repeat i of the other
        r = results.get(k, {})
        pairs = [d / n for n, d in zip(r[num]["cpu_runs"], r[den]["cpu_runs"])]
        return f"; CPU-time ratio per repeat {min(pairs):.2f}-{max(pairs):.2f}x"

    def line(what, goal, num, den, k):
        wall, cpu = ratio(k, num, den, "s_per_step"), ratio(k, num, den, "cpu_per_step")
        if wall is None:
            return
        ok = "met" if min(wall, cpu) >= goal else ("met on CPU time" if cpu >= goal else "MISSED")
        out.append(f"- {what}: {wall:.2f}x wall, {cpu:.2f}x CPU time (target >= {goal}x): {ok}"
                   f"{spread(k, num, den)}")

    for k, goal in goals.get("vs_trl", {}).items():
        line(f"K={k} bpo vs TRL pairs/s", goal, "bpo", "TRL DPOTrainer", k)
    for k, goal in goals.get("cache_vs_trl", {}).items():
        line(f"K={k} bpo + ref cache vs TRL pairs/s", goal, "bpo + ref cache", "TRL DPOTrainer", k)
    if "cache_on_top" in goals:
        for k in results:
            line(f"K={k} ref cache on top of bpo", goals["cache_on_top"], "bpo + ref cache", "bpo", k)
    if "packed_vs_plain" in goals:
        for k in results:
            line(f"K={k} packed path vs plain rows (s/step)", goals["packed_vs_plain"], "bpo", "bpo plain rows", k)
    for k, r in results.items():
        if "ops_vs_plain" in goals and r.get("bpo", {}).get("aten_ops") and r.get("bpo plain rows", {}).get(
                "aten_ops"):
            m, goal = r["bpo"]["aten_ops"] / r["bpo plain rows"]["aten_ops"], goals["ops_vs_plain"]
            out.append(f"- K={k} aten ops per step, packed / plain rows: {r['bpo']['aten_ops']:,.0f} / "
                       f"{r['bpo plain rows']['aten_ops']:,.0f} = {m:.2f} (target <= {goal}): "
                       f"{'met' if m <= goal else 'MISSED'}")
    for k, r in results.items():
        goal = goals.get("mem", {}).get(k)
        if goal is not None and "bpo" in r and "TRL DPOTrainer" in r:
            m = r["bpo"]["peak_mib"] / r["TRL DPOTrainer"]["peak_mib"]
            out.append(f"- K={k} peak memory bpo / TRL: {m:.2f} (target <= {goal}): {'met' if m <= goal else 'MISSED'}")
    _, peak = chip_peak()
    if "mfu" in goals and peak and shape:
        for k, r in results.items():
            if r.get("bpo", {}).get("work"):
                mfu = step_flops("bpo", r["bpo"]["work"], k, shape["batch"]) / r["bpo"]["s_per_step"] / peak
                out.append(f"- K={k} MFU of the bpo step: {100 * mfu:.1f} % (aim >= {100 * goals['mfu']:.0f} %): "
                           f"{'met' if mfu >= goals['mfu'] else 'MISSED'}")
    return out


def format_section(table: str, checks: dict, results: dict, shape: dict, args, total: float, load: tuple) -> str:
    import platform

    import torch
    import transformers
    import trl

    extra = "".join(f" --{name} {getattr(args, name)}" for name in ("size", "repeats", "threads")
                    if getattr(args, name) not in (None, "cpu"))
    if args.k != [1, 3]:
        extra += " --k " + " ".join(map(str, args.k))
    if args.set:
        extra += " --set " + " ".join(args.set)
    if args.variants:
        extra += " --variants " + " ".join(f'"{v}"' for v in args.variants)
    cmd = f"python bench/train_throughput.py{extra} --write"
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    threads = args.threads or shape["threads"] or torch.get_num_threads()
    n_img = (shape["image_size"] // shape["patch_size"]) ** 2
    check_lines = "\n".join(f"- K={k}: bpo {c['bpo_loss']:.6f}, TRL {c['trl_loss']:.6f}, |diff| "
                            f"{abs(c['bpo_loss'] - c['trl_loss']):.1e}, same token ids: {c['same_tokens']}: "
                            f"{'agree' if check_ok(c) else 'DISAGREE'}" for k, c in checks.items())
    prepass = "; ".join(f"K={k}: {r['bpo + ref cache']['prepass_s']:.1f} s" for k, r in results.items()
                        if "bpo + ref cache" in r)
    targets = "\n".join(target_lines(results, args.size, shape))
    labels = {label for r in results.values() for label in r}
    legend = "\n".join(text.format(prepass=prepass) for label, text in LEGEND.items() if label in labels)
    tokens = "; ".join(f"K={k}: {c['token_ratio']:.2f}x" for k, c in checks.items()) or token_ratios(results)
    r1 = results.get(1, {})
    cache_k1 = ""
    if {"bpo + ref cache", "TRL DPOTrainer"} <= set(r1):
        speedup = r1["TRL DPOTrainer"]["s_per_step"] / r1["bpo + ref cache"]["s_per_step"]
        cache_k1 = f" With the reference cache, K = 1 runs at {speedup:.2f}x TRL's pairs/s in this run."
    heads = f", {shape['heads']} heads" if "heads" in shape else ""
    order = ", ".join(v[0] for v in VARIANTS + OPTIONAL_VARIANTS if v[0] in labels)
    lora = lora_of(shape)
    bf16_note = " (frozen weights stored in bf16 on both sides)" if shape["precision"] == "bf16" else ""
    words = shape.get("words", (12, 20))
    vis = (f"CLIP {shape.get('vision_layers', 2)} layers x {shape['vision_hidden']}" if "vision_layers" in shape
           else f"vision width {shape['vision_hidden']}")
    vocab = f", vocab {shape['vocab_size']}" if "vocab_size" in shape else ""
    init = (" Weights: random, initialised in bf16 directly on the GPU (config and processor on disk only)."
            if shape.get("random_init") else "")
    accum = (" TRL takes its 8 x K pairs as K micro-batches of 8 pairs with gradient accumulation (8 x K pair "
             "rows in one forward do not fit in memory at K = 3)." if shape.get("trl_accum") else "")
    checks_text = (f"Step-0 loss with policy = base + non-zero LoRA and reference = base (must agree within 1e-4):\n"
                   f"{check_lines}" if checks else "Step-0 loss check: not run at this size (`--no-check`).")
    profile_note = ("aten ops and kernel launches: one more step after the timed ones, under `torch.profiler` "
                    "(not timed). MFU: the matrix FLOPs of each trainer's own tokens (`step_flops` in the script: "
                    "LoRA policy forward + activation-gradient backward, reference forward unless cached, frozen "
                    "vision tower forward, lm_head on response tokens, the packed path's last-layer o_proj and MLP "
                    "on the rows it reads; attention scores left out) over wall time "
                    "and the chip's bf16 dense peak; on a CPU the achieved TFLOP/s instead.")
    return f"""### {args.size.upper()} size

Command: `{cmd}` ({total / 60:.1f} min in all; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end).

- Model: randomly initialised LLaVA, CLIP {shape['image_size']} px / patch {shape['patch_size']} = {n_img} image \
tokens per prompt ({vis}), Llama hidden {shape['hidden']} x {shape['layers']} \
layers{heads}{vocab}; {shape['records']} records with one image, a short question, responses of {words[0]}-{words[1]} \
words (~{2 * words[0]}-{2 * words[1]} tokens).{init}
- Same for both: LoRA r={lora['r']}, alpha={lora['alpha']}, dropout 0 on every Linear of the language model; \
precision {shape['precision']}{bf16_note}; max_length {MAX_LENGTH}; AdamW, \
constant LR, clipping 1.0; no gradient checkpointing; no TRL precompute. bpo: {shape['batch']} examples per step; \
TRL: the same {shape['batch']} x K pairs per step, one row per pair.{accum}
- Device: {device}; torch {torch.__version__} with {threads} thread(s), transformers \
{transformers.__version__}, trl {trl.__version__}.
- Medians of {args.repeats or shape['repeats']} alternating run(s) ({order}), each in a fresh process, \
{shape['steps'] - shape['warmup']} timed steps after {shape['warmup']} warm-up steps. Peak memory: `ru_maxrss` of the run's process (CPU) or `torch.cuda.max_memory_allocated` (GPU).

{table}

{legend}
- {profile_note}

Targets (ratios in this run):
{targets}

Token arithmetic: TRL's rows hold more real (unpadded) tokens than bpo's packed prompt + responses
({tokens}); that is what packing can save in the language model's matrix products. Attention over shorter rows,
the vision tower (TRL: 4 passes per pair per step, one per row and pass; bpo: 1 per example, shared by both passes)
and TRL's per-step image processing add a little on top, padding and the profiler-free overheads (optimizer,
Python) take a little away. With a prompt P of mostly image tokens and responses L ~ P/6 (LLaVA-1.5 proportions),
2(P + L) / (P + 2L) ~ 1.75 at K = 1 and 2K(P + L) / (P + (K + 1)L) ~ 4.3 at K = 3, so targets above these
ratios need more than removing repeated tokens (the reference cache removes a forward).{cache_k1}

{checks_text}
"""


SECTION = "## Training throughput"
INTRO = ("Written by `bench/train_throughput.py --write` (one subsection per size; what it measures: "
         "[bench/README.md](bench/README.md), the techniques: [docs/performance.md](docs/performance.md)).\n")


def write_section(path: Path, text: str) -> None:
    """Replace this size's subsection of '## Training throughput'; other sections are not ours."""
    from bpo.io import atomic_write

    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        old, start = old.rstrip("\n") + "\n\n" + SECTION + "\n\n" + INTRO, len(old.rstrip("\n")) + 2
    end = old.find("\n## ", start + 1)
    end = len(old) if end < 0 else end + 1
    section = old[start:end]
    title = text.split("\n", 1)[0]
    sub = section.find(title + "\n")
    if sub < 0:
        section = section.rstrip("\n") + "\n\n" + text
    else:
        nxt = section.find("\n### ", sub + 1)
        section = section[:sub] + text + ("" if nxt < 0 else "\n" + section[nxt + 1:])
    new = old[:start] + section.rstrip("\n") + "\n" + ("\n" + old[end:] if end < len(old) else "")
    with atomic_write(path) as fh:
        fh.write(new)


if __name__ == "__main__":
    raise SystemExit(main())

"""Pretraining recipe for the toy LLaVA, in the order real MLLMs are built, cached by config hash.

1. Vision warm-up (stands in for CLIP pretraining): the vision tower + projector learn to name the
   object in each patch through an auxiliary per-patch classifier that is thrown away afterwards.
2. Language model on the biased text-only corpus (stands in for LLM pretraining + chat tuning): it
   learns the partner prior at full strength (``text_partner_prob``), from far more sentences than
   the multimodal set has images.
3. Multimodal alignment (LLaVA stage 1 + 2): projector-only steps, then projector + language model
   on true captions and short QA of rendered scenes; the vision tower stays frozen, as in LLaVA.
   Optionally stops early once a held-out CHAIR_i threshold is met: grounding "clicks" at
   different steps for different seeds, and stopping at a grounding level instead of a step count
   makes seeds comparable (the feasibility study saw wide seed variance with a fixed count).

Plain PyTorch loops (world building, not the bpo trainer). The result is saved with
``save_pretrained`` under ``cache_dir("toy")/llava-<hash>`` with ``toy.json`` (configs, timings, curves);
a second call with the same configs returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bpo.config import option
from bpo.io import stable_hash, write_json
from bpo.paths import cache_dir
from bpo.toy import model as toy_model
from bpo.toy.measure import heldout_chair, heldout_pope
from bpo.toy.model import META_FILE, ModelConfig
from bpo.toy.safety import SafetyConfig, SafetyWorld
from bpo.toy.world import World, WorldConfig

# Bump when the recipe's code changes meaningfully: it is part of the cache key.
# 2: existence-question share and the held-out POPE condition of the early stop (docs/toy.md, "POPE").
# 3: the language model's attention: 8 heads with a key/value projection each (was 4 heads, 2 KV heads).
RECIPE_VERSION = 3


@dataclass
class RecipeConfig:
    """How the toy model is pretrained; every field is part of the cache key."""

    seed: int = option(0, help="seed for initialisation, batch order and held-out evaluation")
    model: ModelConfig = option(default_factory=ModelConfig, help="model sizes")
    threads: int = option(2, help="torch CPU threads during pretraining")
    vision_steps: int = option(1000, help="vision warm-up steps")
    vision_batch: int = option(32, help="images per vision warm-up step")
    vision_lr: float = option(3e-3, help="vision warm-up learning rate")
    text_sentences: int = option(20000, help="size of the biased text-only corpus")
    text_epochs: float = option(3.0, help="passes of the language model over the text corpus")
    text_batch: int = option(32, help="packed 64-token rows per language-model step")
    text_chat_fraction: float = option(0.0, help="fraction of corpus items written as text-only chat turns")
    text_lr: float = option(3e-3, help="language-model learning rate")
    align_images: int = option(2000, help="images in the multimodal alignment set (true captions + QA)")
    align_projector_steps: int = option(50, help="alignment steps that train only the projector (LLaVA stage 1)")
    align_steps: int = option(
        2000, help="most alignment steps for projector + language model (LLaVA stage 2); a cap, the early stop "
        "ends it. 1000 until 2026-12-01: held-out POPE was still rising there when it ended (docs/toy.md, POPE)")
    align_batch: int = option(32, help="examples per alignment step")
    align_lr: float = option(2e-3, help="alignment learning rate")
    align_text_mix: float = option(0.0, help="fraction of each alignment batch that replays text-only corpus chats")
    align_stop_chair: float | None = option(
        0.25, help="stop alignment once held-out CHAIR_i <= this (and parse rate >= 0.9); null = run all "
        "steps. 0.25 is about LLaVA-1.5-7B's CHAIR_i on Object HalBench (23.7), where the paper starts")
    align_exist_share: float = option(
        0.5, help="share of existence (POPE-style) questions in the alignment QA; the other tasks keep their "
        "relative shares. 0.2 was the first recipe, where the 2-token yes/no answers got ~5% of the loss tokens; "
        "0.35 the second (13%), still too little to learn the skill within the cap")
    align_stop_pope: float | None = option(
        0.9, help="early stop also needs held-out random-split existence accuracy >= this (first-token yes/no); "
        "null = CHAIR only. The stop fires at the first noisy held-out estimate (96 scenes) to cross it, so the "
        "eval accuracy lands below: 0.85 (about LLaVA-1.5-7B's POPE-random) gave 0.80 on the eval images")
    align_eval_every: int = option(50, help="held-out evaluation interval (steps) during alignment")
    heldout_images: int = option(96, help="held-out images for the early-stopping check")


@dataclass
class PretrainResult:
    path: Path
    cached: bool
    meta: dict = field(default_factory=dict)


def cache_key(world: WorldConfig, recipe: RecipeConfig, safety: SafetyConfig | None = None) -> str:
    key = {"world": dataclasses.asdict(world), "recipe": dataclasses.asdict(recipe), "recipe_version": RECIPE_VERSION}
    if safety is not None:  # only then: models built before the safety scenario keep their keys
        key["safety"] = dataclasses.asdict(safety)
    return stable_hash(key)[:16]


def pretrain(world_cfg: WorldConfig | None = None, recipe: RecipeConfig | None = None, *,
             safety: SafetyConfig | None = None, cache_root: str | Path | None = None, force: bool = False,
             log: Callable[[str], None] | None = None) -> PretrainResult:
    """Build (or fetch from cache) the pretrained toy model; returns its directory.

    ``safety`` adds the safety scenario (:mod:`bpo.toy.safety`): its words, the text-only request
    chats to the language-model corpus and the benign image-referenced requests to alignment.
    """
    world_cfg = world_cfg or WorldConfig()
    recipe = recipe or RecipeConfig()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    root = Path(cache_root) if cache_root is not None else cache_dir("toy")
    out = root / f"llava-{cache_key(world_cfg, recipe, safety)}"
    if (out / META_FILE).is_file() and not force:
        log(f"[toy] pretrained model cached at {out}")
        return PretrainResult(out, True, json.loads((out / META_FILE).read_text()))
    world = World(world_cfg)
    meta = _run(world, recipe, out, log, SafetyWorld(world, safety) if safety is not None else None)
    return PretrainResult(out, False, meta)


def _run(world: World, recipe: RecipeConfig, out: Path, log, safety: SafetyWorld | None = None) -> dict:
    import torch

    from bpo.toy.tensors import AlignData, TextData

    old_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        t_all = time.perf_counter()
        tok = toy_model.build_tokenizer(world.vocabulary() + (safety.vocabulary() if safety else []))
        model, processor = toy_model.build_model(tok, recipe.model, image_size=world.cfg.image_size,
                                                 patch_size=world.cfg.cell_size, seed=recipe.seed)
        timings, history = {}, {}
        t0 = time.perf_counter()
        align = AlignData.build(world, processor, recipe.align_images, recipe.seed,
                                extra=safety.align_examples() if safety else (),
                                exist_share=recipe.align_exist_share)
        text = TextData.build(world, processor, recipe.text_sentences, seed=recipe.seed,
                              chat_fraction=recipe.text_chat_fraction,
                              extra_chats=safety.text_chats() if safety else ())
        timings["data_s"] = round(time.perf_counter() - t0, 2)
        log(f"[toy] data: {recipe.align_images} images, {recipe.text_sentences} text sentences "
            f"in {len(text)} packed rows ({timings['data_s']} s)")
        stages = (("vision", lambda: _vision_stage(model, world, processor, align, recipe)),
                  ("text", lambda: _text_stage(model, world, text, recipe)),
                  ("align", lambda: _align_stage(model, world, processor, align, text, recipe, log)))
        for name, fn in stages:
            t0 = time.perf_counter()
            history[name] = fn()
            timings[f"{name}_s"] = round(time.perf_counter() - t0, 2)
            log(f"[toy] {name}: {_summary(history[name])} ({timings[f'{name}_s']} s)")
        timings["total_s"] = round(time.perf_counter() - t_all, 2)
        meta = {"world": dataclasses.asdict(world.cfg), "recipe": dataclasses.asdict(recipe),
                "recipe_version": RECIPE_VERSION, "timings": timings, "history": history}
        if safety is not None:
            meta["safety"] = dataclasses.asdict(safety.cfg)
            meta["hazardous"] = safety.hazardous
        _save_atomically(model, processor, meta, out)
        log(f"[toy] pretrained toy model saved to {out} ({timings['total_s']} s)")
        return meta
    finally:
        torch.set_num_threads(old_threads)


def _summary(hist: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in hist.items() if not isinstance(v, (list, dict)))


def _save_atomically(model, processor, meta: dict, out: Path) -> None:
    """Write to a fresh sibling temp dir, then rename: a killed run never leaves a half model in the cache."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp-"))
    try:
        toy_model.save(model, processor, tmp)
        write_json(tmp / META_FILE, meta)
        shutil.rmtree(out, ignore_errors=True)  # an older copy of the same key (force=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _progress(n: int, desc: str, start: int = 0):
    """``range(start, start + n)`` with a tqdm bar on interactive terminals (silent in logs and CI)."""
    from tqdm.auto import tqdm

    return tqdm(range(start, start + n), desc=desc, leave=False, disable=None, mininterval=1.0)


def _schedule(step: int, total: int, warmup: int = 10) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _optimiser(params, lr: float, total: int):
    import torch

    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total))
    return opt, sched


def _vision_stage(model, world: World, processor, align, recipe: RecipeConfig) -> dict:
    """Per-patch classification (empty or one of the kinds) through vision tower + projector.

    Reports the exact-set accuracy (every cell right) on held-out scenes: a seed whose vision
    tower has not separated the faint shapes cannot ground later, so this is worth a look.
    """
    import numpy as np
    import torch

    from bpo.toy.tensors import pixel_tensor

    torch.manual_seed(recipe.seed + 1)
    head = torch.nn.Linear(recipe.model.hidden, len(world.kinds) + 1)
    inner = model.model
    params = list(inner.vision_tower.parameters()) + list(inner.multi_modal_projector.parameters())
    opt, sched = _optimiser(params + list(head.parameters()), recipe.vision_lr, recipe.vision_steps)
    gen = torch.Generator().manual_seed(recipe.seed + 2)

    def cell_logits(pixels):
        return head(torch.stack(list(inner.get_image_features(pixel_values=pixels).pooler_output)))

    for _ in _progress(recipe.vision_steps, "toy vision warm-up"):
        idx = torch.randint(0, len(align.pixels), (recipe.vision_batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(cell_logits(align.pixels[idx]).flatten(0, 1),
                                                 align.cell_labels[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    scenes = [world.scene("heldout", i) for i in range(recipe.heldout_images)]
    labels = torch.tensor([world.cell_labels(s) for s in scenes])
    with torch.no_grad():
        pred = cell_logits(pixel_tensor(np.stack([world.render(s) for s in scenes]), processor))
    acc = (pred.argmax(-1) == labels).all(-1).float().mean().item()
    return {"steps": recipe.vision_steps, "loss": round(loss.item(), 4), "heldout_exact_set_acc": round(acc, 3)}


def _text_stage(model, world: World, text, recipe: RecipeConfig) -> dict:
    """Next-token loss on the packed text corpus; only the language model trains."""
    import torch

    torch.manual_seed(recipe.seed + 3)
    lm_params = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    steps = max(1, math.ceil(recipe.text_epochs * len(text) / recipe.text_batch))
    opt, sched = _optimiser(lm_params, recipe.text_lr, steps)
    gen = torch.Generator().manual_seed(recipe.seed + 4)
    model.train()
    losses = []
    order = torch.randperm(len(text), generator=gen)
    for step in _progress(steps, "toy text LM"):
        start = (step * recipe.text_batch) % len(text)
        if start + recipe.text_batch > len(text):
            order = torch.randperm(len(text), generator=gen)
        idx = order[start: start + recipe.text_batch]
        loss = model(**text.batch(idx)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return {"steps": steps, "loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "text_pull": round(text_pull(model, world, text.tokenizer), 4)}


def text_pull(model, world: World, tok) -> float:
    """Mean P(partner | "<s> a A and a") over kinds A, text only: the prior the LM learned."""
    import torch

    rows = [tok(f"a {a} and a")["input_ids"] for a in world.kinds]
    c_ids = tok.convert_tokens_to_ids(world.cfg.colours)
    s_ids = tok.convert_tokens_to_ids(world.cfg.shapes)
    total = 0.0
    with torch.no_grad():
        for a, row in zip(world.kinds, rows):
            colour, shape = world.partner[a].split()
            c_id = c_ids[world.cfg.colours.index(colour)]
            p_c = model(input_ids=torch.tensor([row])).logits[0, -1].softmax(-1)[c_id].item()
            p_s = model(input_ids=torch.tensor([row + [c_id]])).logits[0, -1].softmax(-1)
            total += p_c * p_s[s_ids[world.cfg.shapes.index(shape)]].item()
    return total / len(world.kinds)


def _set_trainable(model, *, vision: bool, projector: bool, language: bool) -> None:
    inner = model.model
    for p in inner.vision_tower.parameters():
        p.requires_grad_(vision)
    for p in inner.multi_modal_projector.parameters():
        p.requires_grad_(projector)
    for p in list(inner.language_model.parameters()) + list(model.lm_head.parameters()):
        p.requires_grad_(language)


def _align_stage(model, world: World, processor, align, text, recipe: RecipeConfig, log) -> dict:
    """Projector-only steps, then projector + LM, with optional held-out CHAIR early stopping."""
    import torch

    torch.manual_seed(recipe.seed + 5)
    gen = torch.Generator().manual_seed(recipe.seed + 6)
    curve, stopped = [], None
    n_text = int(round(recipe.align_batch * recipe.align_text_mix))
    phases = (("projector", recipe.align_projector_steps, False), ("full", recipe.align_steps, True))
    for phase, steps, language in phases:
        if steps <= 0:
            continue
        _set_trainable(model, vision=False, projector=True, language=language)
        opt, sched = _optimiser(model.parameters(), recipe.align_lr, steps)
        for step in _progress(steps, f"toy align ({phase})", start=1):
            model.train()
            idx = torch.randint(0, len(align), (recipe.align_batch - (n_text if language else 0),), generator=gen)
            loss = model(**align.batch(idx)).loss
            if language and n_text:
                tidx = torch.randint(0, len(text.chat), (n_text,), generator=gen)
                loss = (loss * (recipe.align_batch - n_text) + model(**text.chat_batch(tidx)).loss
                        * n_text) / recipe.align_batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if language and (step % recipe.align_eval_every == 0 or step == steps):
                chair, parse = heldout_chair(model, world, processor, recipe.heldout_images)
                pope = heldout_pope(model, world, processor, recipe.heldout_images)
                curve.append({"step": step, "loss": round(loss.item(), 4), "chair_i": round(chair, 4),
                              "parse_rate": round(parse, 4), "pope_random_acc": round(pope, 4)})
                log(f"[toy]   align step {step}: loss {loss.item():.3f}, held-out CHAIR_i {chair:.3f}, "
                    f"parse {parse:.2f}, POPE-random acc {pope:.2f}")
                pope_ok = recipe.align_stop_pope is None or pope >= recipe.align_stop_pope
                if recipe.align_stop_chair is not None and chair <= recipe.align_stop_chair and parse >= 0.9 \
                        and pope_ok:
                    stopped = step
                    break
    _set_trainable(model, vision=True, projector=True, language=True)
    model.eval()
    last = curve[-1] if curve else {}
    return {"steps": stopped or recipe.align_steps, "early_stopped": stopped is not None,
            "heldout_chair_i": last.get("chair_i"), "heldout_parse_rate": last.get("parse_rate"),
            "heldout_pope_random_acc": last.get("pope_random_acc"), "curve": curve}

"""The pretraining recipe on a micro config: stages run, the model loads publicly, the cache works."""

from __future__ import annotations

import json
import time

from bpo.config import load_config
from bpo.toy.model import META_FILE, load_world
from bpo.toy.pretrain import RecipeConfig, cache_key, pretrain
from bpo.toy.world import WorldConfig


def test_micro_pretraining_saves_a_loadable_llava(micro_pretrained):
    import torch

    from bpo.models.loading import load
    from bpo.toy.tensors import PromptCache

    res, root, lines = micro_pretrained
    assert not res.cached and res.path.parent == root
    assert (res.path / META_FILE).is_file() and not list(root.glob("*.tmp*"))
    meta = json.loads((res.path / META_FILE).read_text())
    assert set(meta["timings"]) == {"data_s", "vision_s", "text_s", "align_s", "total_s"}
    assert meta["history"]["align"]["steps"] == 2 and len(meta["history"]["align"]["curve"]) == 2
    assert any(line.startswith("[toy] vision:") for line in lines)
    model, processor = load(str(res.path))
    world = load_world(res.path)
    assert world.cfg == WorldConfig()
    ids = torch.tensor([PromptCache(processor, 32).ids("describe the image .")])
    pixels = processor.image_processor([world.image(world.scene("eval", 0))], return_tensors="pt")["pixel_values"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                         max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 3


def test_second_call_is_served_from_cache(micro_pretrained, micro_recipe):
    res, root, _ = micro_pretrained
    lines: list[str] = []
    t0 = time.perf_counter()
    again = pretrain(WorldConfig(), micro_recipe(), cache_root=root, log=lines.append)
    assert again.cached and again.path == res.path
    assert time.perf_counter() - t0 < 1.0
    assert lines == [f"[toy] pretrained model cached at {res.path}"]
    assert again.meta["timings"] == res.meta["timings"]


def test_cache_key_follows_every_config(micro_recipe):
    base = cache_key(WorldConfig(), micro_recipe())
    assert base == cache_key(WorldConfig(), micro_recipe())
    assert base != cache_key(WorldConfig(text_partner_prob=0.9), micro_recipe())
    assert base != cache_key(WorldConfig(), micro_recipe(seed=1))
    assert base != cache_key(WorldConfig(), micro_recipe(model=RecipeConfig().model))


def test_recipe_loads_from_yaml_with_nested_overrides(tmp_path):
    f = tmp_path / "toy.yaml"
    f.write_text("recipe:\n  seed: 3\n  model:\n    hidden: 96\n", encoding="utf-8")
    rc = load_config(RecipeConfig, f, ["align_stop_chair=null"], section="recipe")
    assert rc.seed == 3 and rc.model.hidden == 96 and rc.align_stop_chair is None


def test_early_stop_waits_for_heldout_pope(tmp_path, micro_recipe, monkeypatch):
    """With captioning already "grounded" (patched held-out CHAIR 0, parse 1), the stop waits for held-out POPE."""
    import bpo.toy.pretrain as toy_pretrain

    monkeypatch.setattr(toy_pretrain, "heldout_chair", lambda *a: (0.0, 1.0))
    monkeypatch.setattr(toy_pretrain, "heldout_pope", lambda *a: 0.8)
    lines: list[str] = []

    def align(**kw):
        return pretrain(WorldConfig(), micro_recipe(align_stop_chair=0.25, align_steps=2, **kw), cache_root=tmp_path,
                        log=lines.append).meta["history"]["align"]

    waits = align(align_stop_pope=0.85)
    assert not waits["early_stopped"] and [r["pope_random_acc"] for r in waits["curve"]] == [0.8, 0.8]
    assert any("POPE-random acc 0.80" in line for line in lines)
    assert align(align_stop_pope=0.75)["steps"] == 1

"""A micro pretrained toy model shared by the toy tests (a few steps of every stage)."""

from __future__ import annotations

import pytest

from bpo.toy.model import ModelConfig
from bpo.toy.pretrain import RecipeConfig
from bpo.toy.world import WorldConfig

MICRO_MODEL = ModelConfig(vision_hidden=16, vision_layers=1, vision_heads=2, hidden=32, layers=1, heads=2,
                          kv_heads=1, intermediate=64, max_positions=64)


def micro_recipe(**overrides) -> RecipeConfig:
    kwargs = dict(model=MICRO_MODEL, threads=1, vision_steps=3, vision_batch=8, text_sentences=300, text_epochs=0.5,
                  text_batch=8, align_images=24, align_projector_steps=1, align_steps=2, align_batch=8,
                  align_eval_every=1, heldout_images=4, align_stop_chair=None)
    kwargs.update(overrides)
    return RecipeConfig(**kwargs)


@pytest.fixture(scope="session", name="micro_recipe")
def micro_recipe_fixture():
    """The micro recipe factory: ``micro_recipe(**overrides)``."""
    return micro_recipe


@pytest.fixture(scope="session")
def micro_pretrained(tmp_path_factory):
    """(PretrainResult, cache root, log lines) of one micro pretraining run."""
    from bpo.toy.pretrain import pretrain

    root = tmp_path_factory.mktemp("toycache")
    lines: list[str] = []
    res = pretrain(WorldConfig(), micro_recipe(), cache_root=root, log=lines.append)
    return res, root, lines

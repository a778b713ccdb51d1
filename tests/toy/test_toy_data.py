"""Exporting the toy world as bpo records, images and a CHAIR vocabulary."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bpo.data.images import load_image
from bpo.data.objects import Vocabulary
from bpo.data.records import read_records
from bpo.toy.data import export
from bpo.toy.world import POPE_SPLITS, World, parse_caption


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    world = World()
    return world, export(world, tmp_path_factory.mktemp("toy"), n_train=12, n_eval=8)


def test_train_records_are_chosen_only_describe_records(exported):
    world, paths = exported
    recs = list(read_records(paths.train))
    assert len(recs) == 12 and len({r.id for r in recs}) == 12
    for r in recs:
        assert r.rejected == [] and len(r.images) == 1 and r.n_image_parts() == 1
        assert parse_caption(r.chosen, world.kinds) == r.meta["objects"]
        assert r.images[0].startswith("pref/")
        img = load_image(paths.image_root, r.images[0], record_id=r.id)
        assert img.size == (32, 32)


def test_chair_records_carry_the_true_objects(exported):
    world, paths = exported
    recs = list(read_records(paths.chair))
    assert [r.id for r in recs] == [f"eval-{i:06d}" for i in range(8)]
    for i, r in enumerate(recs):
        assert r.meta["objects"] == world.scene("eval", i).names
        assert (paths.image_root / r.images[0]).is_file()
    assert len({r.last_user_text() for r in recs}) > 1  # prompts rotate


def test_pope_records_are_balanced_per_split(exported):
    world, paths = exported
    recs = list(read_records(paths.pope))
    by_split = Counter((r.meta["split"], r.meta["label"]) for r in recs)
    for split in POPE_SPLITS:
        assert by_split[(split, "yes")] == by_split[(split, "no")] > 0
    for r in recs:
        assert r.chosen == r.meta["label"]
        objects = world.scene("eval", int(r.id.split("-")[1])).names
        assert (r.meta["object"] in objects) == (r.meta["label"] == "yes")
        assert r.last_user_text() == f"is there a {r.meta['object']} in the image ?"


def test_vocab_and_world_files(exported):
    world, paths = exported
    vocab = Vocabulary.from_file(paths.vocab)
    assert sorted(vocab.objects) == sorted(world.kinds)
    assert vocab.mentioned("two red circles and a blue square") == ["red circle", "blue square"]
    info = json.loads(paths.world.read_text())
    assert info["partner"] == world.partner and info["kinds"] == world.kinds


def test_export_is_deterministic(exported, tmp_path):
    world, paths = exported
    again = export(world, tmp_path, n_train=12, n_eval=8)
    for name in ("train", "chair", "pope"):
        assert getattr(again, name).read_text() == getattr(paths, name).read_text()
    assert (again.image_root / "eval/eval-000003.png").read_bytes() == (
        paths.image_root / "eval/eval-000003.png").read_bytes()

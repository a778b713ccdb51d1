"""A micro toy world exported as bpo records: chosen-only records and a held-out set with meta.objects."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory):
    from bpo.toy.data import export
    from bpo.toy.model import load_world
    from bpo.toy.pretrain import pretrain
    from bpo.toy.world import WorldConfig
    from tests.toy.conftest import micro_recipe

    res = pretrain(WorldConfig(), micro_recipe(), cache_root=tmp_path_factory.mktemp("toycache"), log=lambda *_: None)
    data = export(load_world(res.path), tmp_path_factory.mktemp("world"), n_train=8, n_eval=4)
    return res.path, data

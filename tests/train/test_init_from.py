"""Iterative rounds in `bpo train`: continue a saved adapter (lora.init_from) with pi_ref = base or the start."""

import pytest
import torch

from bpo.errors import BpoError
from bpo.models.logprobs import example_logps
from bpo.train.metrics import read_metrics
from bpo.train.modeling import reference_mode
from bpo.train.trainer import Trainer
from tests.train.test_trainer import make_cfg


def _quiet(cfg):
    return Trainer(cfg, log=lambda *_: None)


@pytest.fixture
def round1(tiny_llava, pref_file, image_root, tmp_path):
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "r1", "run.max_steps=4", "optim.lr=2e-2")
    _quiet(cfg).setup().train()
    return tmp_path / "r1" / "adapter"


def _trainable(model):
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_init_from_continues_the_saved_adapter(round1, tiny_llava, pref_file, image_root, tmp_path):
    from bpo.models.loading import attach_adapter, load_model

    saved = _trainable(attach_adapter(load_model(tiny_llava), str(round1), trainable=True))
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "r2", "run.max_steps=2", f"lora.init_from={round1}",
                   "lora.r=2")  # ignored: the saved adapter's rank is kept
    tr = _quiet(cfg).setup()
    start = _trainable(tr.policy)
    assert start.keys() == saved.keys() and all(torch.equal(start[k], saved[k]) for k in saved)
    assert any(p.shape[0] == 4 for n, p in start.items() if "lora_A" in n)
    tr.train()
    after = _trainable(tr.policy)
    assert all(not torch.equal(after[k], start[k]) for k in start if "lora_B" in k)


@pytest.mark.parametrize("reference", ["start", "base"])
def test_reference_start_is_the_previous_policy(reference, round1, tiny_llava, pref_file, image_root, tmp_path):
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "r2", "run.max_steps=1", "run.batch_size=8",
                   f"lora.init_from={round1}", f"loss.reference={reference}", "optim.lr=1e-9")
    tr = _quiet(cfg).setup()
    ex = tr.examples
    ref = tr._reference_logps(ex)  # from the cache filled before the first step
    with torch.no_grad():
        tr.policy.eval()
        start = example_logps(tr.policy, ex, tr.processor.tokenizer.pad_token_id)[0]
        with reference_mode(tr.policy) as base_net:
            base = example_logps(base_net, ex, tr.processor.tokenizer.pad_token_id)[0]
        tr.policy.train()
    want = start if reference == "start" else base
    valid = want != 0
    assert torch.allclose(ref[valid], want[valid], atol=1e-4)
    assert not torch.allclose(start[valid], base[valid], atol=1e-2)  # round 1 moved: the choice matters
    tr.train()
    row = read_metrics(tmp_path / "r2" / "metrics.jsonl")[0]
    if reference == "start":  # policy == pi_ref at step 1: every reward is 0
        assert abs(row["rewards/margins"]) < 1e-3 and abs(row["rewards/chosen"]) < 1e-3
    else:  # round 1 already prefers chosen over the base
        assert row["rewards/margins"] > 0.01


def test_reference_start_cache_is_keyed_by_the_start_adapter(round1, tiny_llava, pref_file, image_root, tmp_path):
    from bpo.train.ref_cache import reference_fingerprint

    a = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "x", "loss.reference=start", f"lora.init_from={round1}")
    b = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "x", "loss.reference=base", f"lora.init_from={round1}")
    from bpo.models.loading import load_processor

    p = load_processor(tiny_llava)
    assert reference_fingerprint(a, p)[0] != reference_fingerprint(b, p)[0]


def test_config_checks(tiny_llava, pref_file, image_root, tmp_path):
    with pytest.raises(BpoError, match="ref_cache=auto"):
        make_cfg(tiny_llava, pref_file, image_root, tmp_path, "loss.reference=start", "run.ref_cache=off")
    with pytest.raises(BpoError, match="lora.enabled=true"):
        make_cfg(tiny_llava, pref_file, image_root, tmp_path, "lora.init_from=x", "lora.enabled=false")

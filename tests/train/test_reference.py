"""The reference object: which kind the config picks, what each kind runs, and that nothing reads the trainer."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bpo.config import load_config
from bpo.train.config import TrainConfig
from bpo.train.losses import LOSSES, needs_reference
from bpo.train.reference import (
    DISABLED_ADAPTER,
    FROZEN_COPY,
    DisabledAdapter,
    FrozenCopy,
    build_reference,
    reference_kind,
)


def _cfg(*overrides):
    return load_config(TrainConfig, None, list(overrides))


class _Net(torch.nn.Module):
    """Records, per forward, whether grad was on, its train/eval mode and whether its adapters were off."""

    def __init__(self):
        super().__init__()
        self.adapters_off = False
        self.seen: list[tuple[bool, bool, bool]] = []

    @contextlib.contextmanager
    def disable_adapter(self):
        self.adapters_off = True
        try:
            yield
        finally:
            self.adapters_off = False


def _score(net, examples):
    net.seen.append((torch.is_grad_enabled(), net.training, net.adapters_off))
    return torch.full((len(examples), 2), -1.0), None, None


def test_sft_is_a_registered_loss_without_a_reference():
    assert "sft" in LOSSES.names() and not needs_reference("sft")
    assert all(needs_reference(t) for t in ("sigmoid", "ipo", "hinge"))
    out = LOSSES.get("sft")(torch.tensor([-12.0, -5.0]), None, None, None, chosen_tokens=torch.tensor([4, 1]))
    assert out.losses.tolist() == [3.0, 5.0] and out.chosen_rewards is None


@pytest.mark.parametrize("overrides, kind", [
    ([], DISABLED_ADAPTER),
    (["lora.enabled=false"], FROZEN_COPY),
    (["loss.type=sft"], None),
    (["loss.type=sft", "lora.enabled=false"], None),
])
def test_the_config_picks_the_kind(overrides, kind):
    cfg = _cfg("run.ref_cache='off'", *overrides)
    assert reference_kind(cfg) == kind
    net = _Net()
    ref = build_reference(cfg, policy=net, frozen_copy=net, score=_score, examples=[], processor=None, acc=None)
    assert (ref.kind if ref is not None else None) == kind


@pytest.mark.parametrize("make, adapters_off", [
    (lambda net: DisabledAdapter(net, _score), True),
    (lambda net: DisabledAdapter(net, _score, start=True), False),  # pi_ref = the start adapter itself
    (lambda net: FrozenCopy(net, _score), False),
])
def test_a_reference_pass_is_no_grad_in_eval_mode_and_restores_the_mode(make, adapters_off):
    net = _Net().train()
    lp = make(net).logps(["a", "b", "c"])
    assert lp.shape == (3, 2)
    assert net.seen == [(False, False, adapters_off)]
    assert net.training and not net.adapters_off


def test_full_finetuning_reference_start_without_cache_trains(tiny_llava, pref_file, image_root, tmp_path):
    """Full fine-tuning's pi_ref=start is its frozen copy (there is no init adapter): it needs no cache."""
    from bpo.train.trainer import Trainer
    from tests.train.test_trainer import make_cfg

    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "run", "lora.enabled=false", "loss.reference=start",
                   "run.ref_cache='off'", "run.max_steps=2", "optim.lr=1e-3")
    tr = Trainer(cfg, log=lambda *_: None).setup()
    assert tr.reference.kind == FROZEN_COPY and tr.ref_cache is None
    assert tr.train()["steps"] == 2

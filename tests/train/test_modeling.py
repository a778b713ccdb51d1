"""bf16 storage of frozen weights under run.precision=bf16; trainable weights stay fp32."""

import pytest
import torch

from bpo.models.loading import load_model
from bpo.train.config import LoraSection
from bpo.train.modeling import cast_frozen, prepare_policy
from bpo.train.trainer import Trainer
from tests.train.test_trainer import make_cfg


def test_cast_frozen_keeps_trainable_fp32(tiny_llava):
    policy, ref = prepare_policy(load_model(tiny_llava), LoraSection(r=4, alpha=8, dropout=0.0))
    assert ref is None
    n = cast_frozen(policy, torch.bfloat16)
    params = dict(policy.named_parameters())
    assert n > 0
    assert all(p.dtype == torch.float32 for p in params.values() if p.requires_grad)
    assert all(p.dtype == torch.bfloat16 for p in params.values() if not p.requires_grad)
    assert any("lora_A" in name for name, p in params.items() if p.requires_grad)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: a bf16 Accelerator here would refuse every later fp32 one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_run_stores_frozen_weights_in_bf16_and_trains(tiny_llava, pref_file, image_root, tmp_path,
                                                           fresh_accelerate_state):
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "run", "run.max_steps=2", "run.precision=bf16",
                   "run.ref_cache=off")
    tr = Trainer(cfg, log=lambda *_: None).setup()
    frozen = [p for p in tr.policy.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    result = tr.train()
    assert result["steps"] == 2 and result["final_loss"] == result["final_loss"]  # not NaN


def test_bf16_reference_runs_under_the_policys_autocast(tiny_llava, pref_file, image_root, tmp_path,
                                                        fresh_accelerate_state):
    """pi_ref under the same bf16 autocast as pi_theta: before any optimizer step the two passes compute the same
    log-probs (rewards exactly 0), and the vision tower runs once for both passes (twice when the reference pass ran
    outside autocast)."""
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "run", "run.max_steps=1", "run.precision=bf16",
                   "run.ref_cache=off")
    tr = Trainer(cfg, log=lambda *_: None).setup()
    from bpo.train.metrics import StepStats

    base = tr.acc.unwrap_model(tr.policy)
    tower = base.base_model.model.model.vision_tower
    calls = []
    handle = tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        stats = StepStats()
        examples = tr.examples[:2]
        tr.micro_step(examples, stats)
    finally:
        handle.remove()
    means = stats.means()
    assert means["rewards/chosen"] == 0.0 and means["rewards/rejected"] == 0.0, means
    assert len(calls) == 1  # one image-feature pass shared by the policy and reference passes

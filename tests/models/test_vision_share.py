"""Image features shared between the policy and the reference pass equal those computed per pass.

A training step scores the same examples twice: the policy (LoRA on) with gradients, then the reference
(adapters off, no_grad). With sharing (``LogpsPath``: one layout, one vision pass) both passes must give
what two independent packed passes give, values within 1e-5 and the policy's gradients within 1e-4, and
the vision tower must really run once; where the features would differ between the passes (a trained
tower, autocast in one pass only, dropout in train mode) they are computed per pass.
"""

import pytest
import torch

from bpo.data.records import Negative, Record
from bpo.models.encoding import Encoder
from bpo.models.loading import load
from bpo.models.packed import LogpsPath, hf_model, packed_example_logps
from bpo.models.switches import adapters_disabled
from bpo.models.vision_share import share_reason


def _records() -> list[Record]:
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}],
               [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": "a shape"},
                {"role": "user", "content": "how many people are there ?"}]]
    return [Record(id="a", prompt=prompts[0], chosen="a red square", images=["red.png"],
                   rejected=[Negative("a blue circle", "weakened"), Negative("a cat", "injected")]),
            Record(id="b", prompt=prompts[1], chosen="the car is red", images=["green.png"],
                   rejected=[Negative("two green dogs on the left", "weakened")])]


def _vision(base):
    inner = base.model
    return getattr(inner, "vision_tower", None) or inner.visual


def _lora(model, *, projector: bool = False):
    from peft import LoraConfig, get_peft_model

    save = ["multi_modal_projector"] if projector else None
    # the language model's q/v projections only, as bpo's lora_target_modules picks them
    lm_only = r".*language_model.*\.(q_proj|v_proj)"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lm_only, modules_to_save=save))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero B: the policy differs from the reference
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or (projector and "modules_to_save" in n):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft_model


def _step(fn_policy, fn_ref, model, examples, pad):
    """(policy logps, reference logps, policy grads) as a training step computes them."""
    model.zero_grad(set_to_none=True)
    model.train()
    lp, _, valid = fn_policy(model, examples, pad)
    weights = torch.randn(lp.shape, generator=torch.Generator().manual_seed(0))
    (lp * weights).masked_fill(~valid, 0.0).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad(), adapters_disabled(model):
        model.eval()
        ref, _, _ = fn_ref(model, examples, pad)
        model.train()
    return lp.detach(), ref, grads


def _count_calls(module):
    """Calls of the tower's first layer with weights (the tower's own call may be answered from the cache)."""
    module = next(m for m in module.modules() if m is not module and any(True for _ in m.parameters(recurse=False)))
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def _compare(model, proc, image_root, *, expect_mode, records=None):
    enc = Encoder(proc, image_root, max_length=4096)
    examples = [enc.encode(r) for r in (records or _records())]
    pad = proc.tokenizer.pad_token_id
    base = hf_model(model)
    assert share_reason(base)[0] == expect_mode
    calls, handle = _count_calls(_vision(base))
    try:
        alone = _step(packed_example_logps, packed_example_logps, model, examples, pad)
        assert len(calls) == 2  # unshared: once per pass
        calls.clear()
        path = LogpsPath("auto", log=lambda *_: None)
        shared = _step(path, path, model, examples, pad)
        assert len(calls) == 1  # shared: the reference pass reused the policy pass's features
    finally:
        handle.remove()
    for a, b in zip(alone[:2], shared[:2]):
        assert (a - b).abs().max().item() <= 1e-5, (a, b)
    assert (alone[0] - alone[1]).abs().max().item() > 1e-3  # the adapter really changes the policy
    assert set(alone[2]) == set(shared[2]) and alone[2]
    worst = max((alone[2][n] - shared[2][n]).abs().max().item() for n in alone[2])
    assert worst <= 1e-4, worst
    return alone, shared


@pytest.mark.parametrize("family", ["llava", "qwen2vl", "llava_next"])
def test_shared_features_match_per_pass(tiny_family, image_root, family):
    model, proc = load(tiny_family(family))
    _compare(_lora(model.float()), proc, image_root, expect_mode="features")


def test_trained_projector_shares_the_tower_only(tiny_family, image_root):
    """lora.train_projector: the projector runs in each pass (trained copy / original) and gets gradients."""
    model, proc = load(tiny_family("llava"))
    alone, _ = _compare(_lora(model.float(), projector=True), proc, image_root, expect_mode="tower")
    assert any("modules_to_save" in n for n in alone[2])


def test_not_shared_where_the_features_could_differ(tiny_family, image_root):
    model, proc = load(tiny_family("qwen2vl"))
    model = model.float()
    base = model
    model.requires_grad_(True)  # full fine-tuning with the vision tower trained
    assert share_reason(base) == (None, "the vision tower is trained")
    model.requires_grad_(False)
    from peft import LoraConfig, get_peft_model

    on_vision = get_peft_model(model, LoraConfig(r=2, target_modules=["qkv"]))  # Qwen2-VL's vision attention
    assert share_reason(hf_model(on_vision)) == (None, "adapters on the vision tower")


def test_mode_and_autocast_enter_the_key(tiny_family, image_root):
    """Dropout in the vision tower: train-mode and eval-mode passes differ, so each computes its own."""
    model, proc = load(tiny_family("llava"))
    model = _lora(model.float())
    base = hf_model(model)
    base.model.vision_tower.config.attention_dropout = 0.1
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records()]
    pad = proc.tokenizer.pad_token_id
    path = LogpsPath("auto", log=lambda *_: None)
    calls, handle = _count_calls(base.model.vision_tower)
    try:
        _step(path, path, model, examples, pad)
        assert len(calls) == 2
        base.model.vision_tower.config.attention_dropout = 0.0
        calls.clear()
        path(model, examples, pad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            path(model, examples, pad)
        assert len(calls) == 2  # fp32 pass and bf16 autocast pass: different features
    finally:
        handle.remove()
        base.model.vision_tower.config.attention_dropout = 0.0


@pytest.mark.parametrize("family", ["llava", "qwen2vl", "llava_next", "qwen25vl"])
def test_shared_features_with_text_only_and_two_image_examples(tiny_family, family, tmp_path):
    """A batch mixing one, zero and two images per example: the shared features land on the right tokens."""
    from tests.models.test_packed import _image_count_records, write_mixed_size_images

    model, proc = load(tiny_family(family))
    _compare(_lora(model.float()), proc, write_mixed_size_images(tmp_path), expect_mode="features",
             records=_image_count_records())

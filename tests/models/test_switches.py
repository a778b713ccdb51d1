"""The reference pass's switches give what peft's disable_adapter() and eval() / train() give."""

import torch

from bpo.models.loading import load
from bpo.models.switches import adapters_disabled, eval_mode


def _lora(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.q_proj",
                                                  modules_to_save=["multi_modal_projector"], lora_dropout=0.1))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    return peft_model


def test_adapters_disabled_matches_peft(tiny_family):
    """Same base-model output and the same adapter state afterwards as peft's own disable_adapter()."""
    model, proc = load(tiny_family("llava"))
    model = _lora(model.float())
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        with model.disable_adapter():
            want = model(input_ids=ids).logits
        state = {n: p.requires_grad for n, p in model.named_parameters()}
        with adapters_disabled(model):
            got = model(input_ids=ids).logits
            assert model._adapters_disabled
        on = model(input_ids=ids).logits
    assert torch.equal(want, got) and not torch.equal(want, on)
    assert state == {n: p.requires_grad for n, p in model.named_parameters()}
    assert not model._adapters_disabled


def test_adapters_disabled_falls_back_to_peft_where_partly_off(tiny_family):
    model, _ = load(tiny_family("llava"))
    model = _lora(model.float())
    with model.disable_adapter(), adapters_disabled(model):  # already off: peft's own manager, no error
        assert model._adapters_disabled
    assert not model._adapters_disabled


def test_eval_mode_restores_each_module(tiny_family):
    model, _ = load(tiny_family("llava"))
    model = _lora(model.float()).train()
    frozen = model.get_base_model().model.vision_tower
    frozen.eval()  # a submodule kept in eval mode stays so (train(was) on the root would flip it)
    before = {n: m.training for n, m in model.named_modules()}
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        model.eval()
        want = model(input_ids=ids).logits  # LoRA dropout 0.1: train mode would differ
        model.train()
        frozen.eval()
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            got = model(input_ids=ids).logits
    assert torch.equal(want, got)
    assert before == {n: m.training for n, m in model.named_modules()}

"""The reference pass's two switches, adapters off and eval mode, without a walk of the whole model each.

Under LoRA the reference is the policy with its adapters off, in eval mode, once per training step.

- Adapters: peft's ``disable_adapter()`` first builds a status report of every adapter layer
  (``get_model_status``: a walk over all modules, with a ``repr`` of each LoRA layer), then walks every
  module twice more to switch the layers off and on: ~12 ms per step on the CPU benchmark's 4-layer model,
  about 3 % of its step, and more the deeper the model. :func:`adapters_disabled` switches the same layers
  with the same calls (``enable_adapters(False)`` / ``enable_adapters(True)`` on every tuner layer and
  auxiliary wrapper, as ``BaseTuner._enable_adapter_layers`` does), over a list found once per model. Where
  peft's manager does anything else (prompt learning, adaption prompts, a LoRA bias, which peft warns about,
  adapters already off or only partly on) it is used as it is.
- Mode: ``model.eval()`` then ``model.train()`` recurse through every module's ``train()`` (transformers'
  override included): ~3 ms per step there. :func:`eval_mode` sets each module's ``training`` flag
  directly and restores each module's own flag afterwards; where a module overrides ``train()`` with more
  than that (transformers' kernel switch when ``use_kernels`` is on, any other class), it calls ``eval()``.
"""

from __future__ import annotations

import contextlib

import torch


def _tuner_layers(model) -> list | None:
    """The modules peft toggles, cached on ``model``; None where peft's own manager must be used."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    configs = getattr(model, "peft_config", None)
    active = getattr(model, "active_adapter", None)
    if not configs or not isinstance(active, str) or active not in configs:
        return None
    config = configs[active]
    if config.is_prompt_learning or getattr(config, "is_adaption_prompt", False):
        return None
    if getattr(config, "bias", "none") != "none" or getattr(model, "_adapters_disabled", False):
        return None
    key = (tuple(configs), active)
    cached = getattr(model, "_bpo_tuner_layers", None)
    if cached is None or cached[0] != key:
        inner = model.base_model.model
        layers = [m for m in inner.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        cached = (key, layers)
        model._bpo_tuner_layers = cached
    layers = cached[1]
    if not layers or any(getattr(m, "_disable_adapters", False) for m in layers):
        return None  # partly off already: peft's manager knows what to restore
    return layers


@contextlib.contextmanager
def adapters_disabled(model):
    """``with adapters_disabled(peft_model):`` the base model, as ``peft_model.disable_adapter()``."""
    layers = _tuner_layers(model)
    if layers is None:
        with model.disable_adapter():
            yield
        return
    for m in layers:
        m.enable_adapters(False)
    model._adapters_disabled = True
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)
        model._adapters_disabled = False


def _plain_train(mods) -> bool:
    """Whether every module's ``train()`` only sets ``training`` (so setting the flag directly is the same)."""
    from transformers import PreTrainedModel

    plain = {torch.nn.Module.train, PreTrainedModel.train}
    return all(type(m).train in plain and not getattr(m, "use_kernels", False) for m in mods)


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode inside the block; every module's own mode restored afterwards."""
    mods = list(model.modules())
    if not _plain_train(mods):  # the module's own train(), as the trainer did before
        was = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was)
        return
    was = [m.training for m in mods]
    for m in mods:
        m.__dict__["training"] = False  # what nn.Module.train(False) sets, module by module
    try:
        yield model
    finally:
        for m, flag in zip(mods, was):
            m.__dict__["training"] = flag

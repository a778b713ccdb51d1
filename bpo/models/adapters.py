"""peft's ``disable_adapter()`` for the reference pass, without its per-call scan of the whole model.

Under LoRA the reference is the policy with its adapters off, once per training step. peft's own context
manager first builds a status report of every adapter layer (``get_model_status``: a walk over all
modules, with a ``repr`` of each LoRA layer) and then walks every module twice more to switch the layers
off and on: ~12 ms per step on the CPU benchmark's 4-layer model, about 3 % of its step, and more Python
per step the deeper the model. :func:`adapters_disabled` switches the same layers with the same calls
(``enable_adapters(False)`` / ``enable_adapters(True)`` on every tuner layer and auxiliary wrapper, as
``BaseTuner._enable_adapter_layers`` does), over a list found once per model. Where peft's manager does
anything else (prompt learning, adaption prompts, a LoRA bias, which peft warns about, adapters already off
or only partly on) it is used as it is.
"""

from __future__ import annotations

import contextlib


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
